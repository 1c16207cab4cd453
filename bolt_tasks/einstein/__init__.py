"""Einstein, bolt's code-search engine: chunks of source text embedded as hashed vectors."""

"""What only worker-side processes need: pools, start-up, and the local deployment supervisor."""

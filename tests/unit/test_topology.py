"""Topology detection on sysfs and cgroup trees the tests build, overrides, and pool plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from bolt_tasks.cpulist import format_cpulist, parse_cpulist
from bolt_tasks.errors import ConfigError
from bolt_tasks.names import Pool
from bolt_tasks.settings import Settings
from bolt_workers.launcher import plan_pool, worker_argv
from bolt_workers.startup import child_core
from bolt_workers.topology import Host, detect


class FakeMachine:
    """A /sys tree, a cgroup tree and /proc/self/cgroup under tmp_path, and an affinity mask."""

    def __init__(self, root: Path, cpus: int) -> None:
        self.root = root
        self.sysfs, self.cgroup = root / "sys", root / "cgroup"
        self.proc_cgroup = root / "proc-self-cgroup"
        self.affinity = set(range(cpus))
        for cpu in range(cpus):
            (self.cpu_dir(cpu)).mkdir(parents=True)
        self.proc_cgroup.write_text("0::/\n")

    def cpu_dir(self, cpu: int) -> Path:
        return self.sysfs / "devices" / "system" / "cpu" / f"cpu{cpu}"

    def write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    def per_cpu(self, file: str, values: dict[int, int]) -> None:
        for cpu, value in values.items():
            self.write(self.cpu_dir(cpu) / file, str(value))

    def host(self, platform: str = "linux", sysctl=None) -> Host:
        return Host(
            sysfs=self.sysfs,
            cgroup=self.cgroup,
            proc_cgroup=self.proc_cgroup,
            affinity=lambda: set(self.affinity),
            sysctl=sysctl or (lambda name: None),
            platform=platform,
        )


def detected(machine: FakeMachine, **env: str):
    return detect(Settings.from_env(env), machine.host())


def test_cpulists_parse_and_format_both_ways():
    assert parse_cpulist("0-3,8") == (0, 1, 2, 3, 8)
    assert parse_cpulist(" 5,1-2,2 ") == (1, 2, 5)
    assert parse_cpulist("", allow_empty=True) == ()
    assert format_cpulist((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    for bad in ("", "a", "3-1", "1,,2", "0-", "-1"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)


def test_an_intel_hybrid_with_6_p_and_8_e_cores_splits_by_the_kernel_lists(tmp_path):
    machine = FakeMachine(tmp_path, 20)
    machine.write(machine.sysfs / "devices" / "cpu_core" / "cpus", "0-11")
    machine.write(machine.sysfs / "devices" / "cpu_atom" / "cpus", "12-19")
    topology = detected(machine)
    assert topology.p_cores == tuple(range(12))  # six cores, two threads each
    assert topology.e_cores == tuple(range(12, 20))
    assert topology.source == "intel-hybrid"
    assert topology.p_children == 12
    assert any("cpu_atom 12-19" in reason for reason in topology.reasons)


def test_an_arm_big_little_4_plus_4_splits_by_cpu_capacity(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.per_cpu(
        "cpu_capacity", {**dict.fromkeys(range(4), 446), **dict.fromkeys(range(4, 8), 1024)}
    )
    topology = detected(machine)
    assert (topology.p_cores, topology.e_cores) == ((4, 5, 6, 7), (0, 1, 2, 3))
    assert topology.source == "cpu-capacity"


def test_three_tiers_split_at_the_widest_gap_and_close_frequencies_are_alike(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    freqs = {0: 3_000_000, 1: 2_400_000, 2: 2_400_000, 3: 2_400_000}
    machine.per_cpu("cpufreq/cpuinfo_max_freq", {**freqs, **dict.fromkeys(range(4, 8), 1_200_000)})
    topology = detected(machine)
    assert (topology.p_cores, topology.e_cores) == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert topology.source == "cpu-frequency"

    favoured = FakeMachine(tmp_path / "favoured", 4)
    favoured.per_cpu(
        "cpufreq/cpuinfo_max_freq", {0: 4_800_000, 1: 4_800_000, 2: 4_700_000, 3: 4_700_000}
    )
    assert detected(favoured).e_cores == ()


def test_a_homogeneous_2_core_machine_has_only_p_cores_and_an_unpinned_e_pool(tmp_path):
    machine = FakeMachine(tmp_path, 2)
    machine.per_cpu("cpu_capacity", {0: 1024, 1: 1024})
    settings = Settings.from_env({})
    topology = detect(settings, machine.host())
    assert (topology.p_cores, topology.e_cores, topology.source) == ((0, 1), (), "alike")
    p_plan, e_plan = plan_pool(Pool.P, settings, topology), plan_pool(Pool.E, settings, topology)
    assert p_plan.children == 2 and not p_plan.pinned
    assert not e_plan.pinned and e_plan.cores == (0, 1)
    assert plan_pool(Pool.P, settings.replace(p_pin="always"), topology).pinned


def test_a_cgroup_cpuset_allowing_2_of_8_cpus_leaves_those_2(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.proc_cgroup.write_text("0::/bolt.slice/worker\n")
    machine.write(machine.cgroup / "bolt.slice" / "worker" / "cpuset.cpus.effective", "2-3")
    topology = detected(machine)
    assert topology.usable == (2, 3) and topology.p_children == 2


def test_a_cgroup_v1_cpuset_is_read_from_its_own_hierarchy(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.proc_cgroup.write_text("3:cpuset:/box\n1:cpu,cpuacct:/box\n0::/\n")
    machine.write(machine.cgroup / "cpuset" / "box" / "cpuset.effective_cpus", "0,6")
    assert detected(machine).usable == (0, 6)


def test_the_affinity_mask_limits_the_cores_too(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.per_cpu(
        "cpu_capacity", {**dict.fromkeys(range(4), 446), **dict.fromkeys(range(4, 8), 1024)}
    )
    machine.affinity = {0, 1, 6}
    topology = detected(machine)
    assert (topology.p_cores, topology.e_cores) == ((6,), (0, 1))


def test_a_quota_of_1_5_cpus_sizes_the_p_pool_at_2_children(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.proc_cgroup.write_text("0::/job\n")
    machine.write(machine.cgroup / "job" / "cpu.max", "150000 100000")
    machine.write(machine.cgroup / "cpu.max", "max 100000")
    topology = detected(machine)
    assert topology.quota_cpus == 1.5
    assert topology.p_children == 2 and len(topology.p_cores) == 8
    assert plan_pool(Pool.P, Settings.from_env({}), topology).children == 2


def test_a_cgroup_v1_quota_and_the_smallest_of_nested_quotas_count(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.proc_cgroup.write_text("1:cpu,cpuacct:/outer/inner\n")
    cpu = machine.cgroup / "cpu,cpuacct"
    machine.write(cpu / "outer" / "cpu.cfs_quota_us", "300000")
    machine.write(cpu / "outer" / "cpu.cfs_period_us", "100000")
    machine.write(cpu / "outer" / "inner" / "cpu.cfs_quota_us", "-1")
    machine.write(cpu / "outer" / "inner" / "cpu.cfs_period_us", "100000")
    assert detected(machine).quota_cpus == 3.0


def test_an_override_sets_the_p_cores_and_the_rest_become_e_cores(tmp_path):
    machine = FakeMachine(tmp_path, 14)
    machine.write(machine.sysfs / "devices" / "cpu_core" / "cpus", "0-5")
    machine.write(machine.sysfs / "devices" / "cpu_atom" / "cpus", "6-13")
    topology = detected(machine, BOLT_P_CORES="0-3,8")
    assert topology.p_cores == (0, 1, 2, 3, 8)
    assert topology.e_cores == (4, 5, 6, 7, 9, 10, 11, 12, 13)
    assert topology.source == "override"
    both = detected(machine, BOLT_P_CORES="0-1", BOLT_E_CORES="12-13")
    assert (both.p_cores, both.e_cores) == ((0, 1), (12, 13))
    on_homogeneous = detected(FakeMachine(tmp_path / "two", 2), BOLT_P_CORES="0,1")
    assert plan_pool(Pool.P, Settings.from_env({"BOLT_P_CORES": "0,1"}), on_homogeneous).pinned


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BOLT_P_CORES": "0-x"}, "BOLT_P_CORES"),
        ({"BOLT_E_CORES": "4-2"}, "BOLT_E_CORES"),
        ({"BOLT_P_CORES": "0-3", "BOLT_E_CORES": "3-5"}, "BOLT_E_CORES"),
        ({"BOLT_P_CORES": "6-9"}, "BOLT_P_CORES"),
        ({"BOLT_E_CORES": "0-7"}, "BOLT_E_CORES"),
    ],
)
def test_a_bad_override_is_refused_naming_its_variable(tmp_path, env, named):
    machine = FakeMachine(tmp_path, 8)
    with pytest.raises(ConfigError, match=named):
        detected(machine, **env)


def test_an_override_outside_a_cpuset_is_refused(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.write(machine.cgroup / "cpuset.cpus.effective", "0-1")
    with pytest.raises(ConfigError, match=r"BOLT_P_CORES=1-2 names CPU\(s\) 2 .*usable: 0-1"):
        detected(machine, BOLT_P_CORES="1-2")


def test_macos_perflevels_size_the_pools_without_pinning(tmp_path):
    values = {
        "hw.logicalcpu": "10",
        "hw.nperflevels": "2",
        "hw.perflevel0.logicalcpu": "8",
        "hw.perflevel1.logicalcpu": "2",
    }
    machine = FakeMachine(tmp_path, 0)
    settings = Settings.from_env({})
    topology = detect(settings, machine.host("darwin", values.get))
    assert (len(topology.p_cores), len(topology.e_cores)) == (8, 2)
    assert topology.source == "macos-perflevels" and not topology.can_pin
    assert not plan_pool(Pool.P, settings, topology).pinned
    assert not plan_pool(Pool.E, settings, topology).pinned
    alike = detect(settings, machine.host("darwin", {"hw.logicalcpu": "4"}.get))
    assert (alike.p_cores, alike.e_cores) == ((0, 1, 2, 3), ())


def test_hybrid_plans_pin_p_children_one_core_each_and_the_e_process_to_e_cores(tmp_path):
    machine = FakeMachine(tmp_path, 8)
    machine.per_cpu(
        "cpu_capacity", {**dict.fromkeys(range(4), 446), **dict.fromkeys(range(4, 8), 1024)}
    )
    settings = Settings.from_env({})
    topology = detect(settings, machine.host())
    p_plan, e_plan = plan_pool(Pool.P, settings, topology), plan_pool(Pool.E, settings, topology)
    assert p_plan.pinned and p_plan.cores == (4, 5, 6, 7) and p_plan.children == 4
    assert e_plan.pinned and e_plan.cores == (0, 1, 2, 3)
    assert [child_core(index, p_plan.cores) for index in range(6)] == [4, 5, 6, 7, 4, 5]
    never = settings.replace(p_pin="never")
    assert not plan_pool(Pool.P, never, topology).pinned


def test_autoscaling_settings_reach_the_worker_command_line(tmp_path):
    topology = detected(FakeMachine(tmp_path, 2))
    settings = Settings.from_env({"BOLT_P_AUTOSCALE_MAX": "4", "BOLT_P_AUTOSCALE_MIN": "2"})
    argv = worker_argv(Pool.P, settings, topology)
    assert argv[argv.index("--autoscale") + 1] == "4,2"
    assert argv[argv.index("--concurrency") + 1] == "2"
    assert "--autoscale" not in worker_argv(Pool.P, settings, topology, concurrency=3)
    assert "--autoscale" not in worker_argv(Pool.E, settings, topology)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BOLT_P_AUTOSCALE_MAX": "2", "BOLT_P_AUTOSCALE_MIN": "3"}, "BOLT_P_AUTOSCALE_MIN"),
        ({"BOLT_P_AUTOSCALE_MAX": "2", "BOLT_P_CONCURRENCY": "2"}, "BOLT_P_CONCURRENCY"),
        ({"BOLT_P_AUTOSCALE_CPU_TARGET_PCT": "120"}, "BOLT_P_AUTOSCALE_CPU_TARGET_PCT"),
        ({"BOLT_P_PIN": "sometimes"}, "BOLT_P_PIN"),
    ],
)
def test_bad_autoscaling_and_pinning_settings_are_refused(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)

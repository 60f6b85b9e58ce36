"""Parsing what sbatch, scontrol, sacct and the jobcomp file print (captured from Slurm 22.05)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcps.slurm.parse import (
    SlurmParseError,
    classify_state,
    format_time_limit,
    parse_duration,
    parse_exit_code,
    parse_gres,
    parse_job_id,
    parse_nodes,
    parse_record,
    parse_records,
    parse_sacct,
)

DATA = Path(__file__).resolve().parent / "data"

# scontrol show job -o of a job submitted from a directory with a space and quotes in its name.
JOB_FAILED = (
    "JobId=2 JobName=my job.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Nice=0 "
    "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-11-24T04:10:10 EligibleTime=2026-11-24T04:10:10 AccrueTime=2026-11-24T04:10:10 "
    "StartTime=2026-11-24T04:10:10 EndTime=2026-11-24T04:10:10 Deadline=N/A SuspendTime=None SecsPreSuspend=0 "
    "LastSchedEval=2026-11-24T04:10:10 Scheduler=Main Partition=debug AllocNode:Sid=localhost:5390 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=n6 BatchHost=n6 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 "
    "ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* "
    "MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK "
    "Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/odd dir/it's \"x\"/my job.sh 0 3 "
    "WorkDir=/tmp/odd dir/it's \"x\" StdErr=/tmp/odd dir/it's \"x\"/slurm-2.out StdIn=/dev/null "
    "StdOut=/tmp/odd dir/it's \"x\"/slurm-2.out Power= \n"
)
JOB_CANCELLED = JOB_FAILED.replace("JobId=2", "JobId=3").replace("JobState=FAILED Reason=NonZeroExitCode",
                                                                 "JobState=CANCELLED Reason=None").replace(
    "ExitCode=3:0 RunTime=00:00:00", "ExitCode=0:15 RunTime=00:00:02")
JOBCOMP_LINE = (
    "JobId=2 UserId=root(0) GroupId=root(0) Name=my job.sh JobState=FAILED Partition=debug TimeLimit=UNLIMITED "
    "StartTime=2026-11-24T04:10:10 EndTime=2026-11-24T04:10:10 NodeList=n6 NodeCnt=1 ProcCnt=1 "
    "WorkDir=/tmp/odd dir/it's \"x\" ReservationName= Tres=cpu=1,mem=15259M,node=1,billing=1 Account= QOS= "
    "WcKey= Cluster=unknown SubmitTime=2026-11-24T04:10:10 EligibleTime=2026-11-24T04:10:10 "
    "DerivedExitCode=0:0 ExitCode=3:0 \n"
)
STEP_LINE = ("StepId=7.1 UserId=0 StartTime=2026-11-24T04:08:16 TimeLimit=00:02:00 State=RUNNING Partition=debug "
             "NodeList=n[1-2] Nodes=2 CPUs=4 Tasks=4 Name=hpcps-trial 3-11032-2 Network=(null) TRES=cpu=4,mem=0,node=2 "
             "ResvPorts=(null) CPUFreqReq=Default Dist=Arbitrary SrunHost:Pid=vm:11304")
# Hand-written in the form of a production cluster: typed GPUs with socket binding, a drained node.
NODES_SITE = (
    "NodeName=gpu01 Arch=x86_64 CoresPerSocket=32 CPUAlloc=16 CPUEfctv=64 CPUTot=64 CPULoad=3.10 "
    "AvailableFeatures=a100,ib ActiveFeatures=a100,ib Gres=gpu:a100:4(S:0-1) NodeAddr=gpu01 NodeHostName=gpu01 "
    "Version=22.05.8 OS=Linux 5.14.0 #1 SMP  RealMemory=512000 AllocMem=0 FreeMem=400000 Sockets=2 Boards=1 "
    "State=MIXED ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=gpu,all  "
    "BootTime=2026-11-01T00:00:00 SlurmdStartTime=2026-11-01T00:01:00 CfgTRES=cpu=64,mem=500G,gres/gpu=4\n"
    "NodeName=cpu001 Arch=x86_64 CoresPerSocket=64 CPUAlloc=0 CPUEfctv=128 CPUTot=128 CPULoad=0.01 "
    "AvailableFeatures=(null) ActiveFeatures=(null) Gres=(null) NodeAddr=cpu001 NodeHostName=cpu001 "
    "RealMemory=256000 AllocMem=0 FreeMem=250000 Sockets=2 Boards=1 State=IDLE+DRAIN ThreadsPerCore=1 "
    "Partitions=cpu,all  Reason=disk check [root@2026-11-20T10:00:00]\n"
)


@pytest.mark.parametrize("text,expected", [
    ("123\n", "123"), ("123;hpcps-local\n", "123"), ("Submitted batch job 77\n", "77"),
    ("sbatch: warning: can't honor --ntasks-per-node\n99\n", "99"),
    ("Submitted batch job 8 on cluster c2\n", "8"),
])
def test_job_id_from_sbatch_output(text, expected):
    assert parse_job_id(text) == expected


def test_job_id_missing_is_a_clear_error():
    with pytest.raises(SlurmParseError, match="no job id in sbatch output: 'sbatch: error: Batch job submission"):
        parse_job_id("sbatch: error: Batch job submission failed: Invalid node name specified\n")


def test_scontrol_job_record_keeps_values_with_spaces_and_equals_signs():
    rec = parse_record(JOB_FAILED)
    assert rec["JobName"] == "my job.sh"
    assert rec["WorkDir"] == "/tmp/odd dir/it's \"x\""
    assert rec["Command"] == "/tmp/odd dir/it's \"x\"/my job.sh 0 3"
    assert rec["StdOut"] == "/tmp/odd dir/it's \"x\"/slurm-2.out"
    assert rec["TRES"] == "cpu=1,node=1,billing=1"
    assert rec["ReqB:S:C:T"] == "0:0:*:*" and rec["CPUs/Task"] == "1" and rec["MCS_label"] == "N/A"
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "3:0" and rec["Power"] == ""


def test_lower_case_word_with_equals_in_a_path_stays_in_the_value():
    rec = parse_record("JobId=5 WorkDir=/data/run a=1/b StdIn=/dev/null")
    assert rec == {"JobId": "5", "WorkDir": "/data/run a=1/b", "StdIn": "/dev/null"}


def test_records_parse_line_by_line_and_reject_non_records():
    recs = parse_records(JOB_FAILED + JOB_CANCELLED + "\n")
    assert [r["JobId"] for r in recs] == ["2", "3"]
    with pytest.raises(SlurmParseError, match="not a Key=Value record"):
        parse_record("slurm_load_jobs error: Invalid job id specified")


def test_jobcomp_filetxt_line():
    rec = parse_record(JOBCOMP_LINE)
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "3:0" and rec["Name"] == "my job.sh"
    assert rec["ReservationName"] == "" and rec["Tres"] == "cpu=1,mem=15259M,node=1,billing=1"


def test_step_record_name_with_space():
    rec = parse_record(STEP_LINE)
    assert rec["StepId"] == "7.1" and rec["Name"] == "hpcps-trial 3-11032-2" and rec["SrunHost:Pid"] == "vm:11304"


@pytest.mark.parametrize("text,expected", [("0:0", (0, 0)), ("1:0", (1, 0)), ("0:9", (0, 9)), ("137:0", (137, 0)),
                                           (" 2:15 ", (2, 15))])
def test_exit_codes(text, expected):
    assert parse_exit_code(text) == expected


def test_bad_exit_code():
    with pytest.raises(SlurmParseError, match="STATUS:SIGNAL"):
        parse_exit_code("oops")


@pytest.mark.parametrize("state,expected", [
    ("PENDING", "PENDING"), ("CONFIGURING", "PENDING"), ("REQUEUED", "PENDING"), ("SUSPENDED", "PENDING"),
    ("RUNNING", "RUNNING"), ("COMPLETING", "RUNNING"), ("RUNNING+", "RUNNING"),
    ("COMPLETED", "COMPLETED"), ("FAILED", "FAILED"), ("NODE_FAIL", "FAILED"), ("OUT_OF_MEMORY", "FAILED"),
    ("BOOT_FAIL", "FAILED"), ("TIMEOUT", "TIMEOUT"), ("DEADLINE", "TIMEOUT"),
    ("CANCELLED", "CANCELLED"), ("CANCELLED by 0", "CANCELLED"), ("SOMETHING_NEW", "RUNNING"),
])
def test_states(state, expected):
    assert classify_state(state) == expected


def test_sacct_parsable2():
    text = ("12|FAILED|1:0|00:00:03|n[1-2]|NonZeroExitCode\n"
            "12.batch|FAILED|1:0|00:00:03|n1|\n"
            "12.0|CANCELLED by 0|0:9|00:00:02|n[1-2]|\n\n")
    rows = parse_sacct(text)
    assert [r.job_id for r in rows] == ["12", "12.batch", "12.0"]
    assert rows[0].exit_code == "1:0" and rows[0].node_list == "n[1-2]" and rows[0].reason == "NonZeroExitCode"
    assert classify_state(rows[2].state) == "CANCELLED" and parse_exit_code(rows[2].exit_code) == (0, 9)
    with pytest.raises(SlurmParseError, match="expected 6"):
        parse_sacct("12|COMPLETED|0:0\n")


@pytest.mark.parametrize("text,seconds", [("00:00:03", 3), ("05:00", 300), ("1:02:03", 3723), ("2-01:00:00", 176400),
                                          ("45", 2700), ("UNLIMITED", None), ("N/A", None)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("seconds,text", [(1, "1"), (20, "1"), (60, "1"), (61, "2"), (3600, "60"), (0.5, "1")])
def test_time_limits_round_up_to_minutes(seconds, text):
    assert format_time_limit(seconds) == text


def test_time_limit_must_be_positive():
    with pytest.raises(ValueError, match="> 0"):
        format_time_limit(0)


@pytest.mark.parametrize("text,expected", [
    ("gpu:1", {"gpu": 1}), ("gpu:a100:4(S:0-1)", {"gpu": 4}), ("gpu:a100:2,gpu:v100:2", {"gpu": 4}),
    ("gpu:a100:2(S:0),mps:200", {"gpu": 2, "mps": 200}), ("(null)", {}), ("", {}), ("gpu", {"gpu": 1}),
    ("bandwidth:lustre:4G", {"bandwidth": 4 * 1024**3}),
])
def test_gres(text, expected):
    assert parse_gres(text) == expected


def test_nodes_of_the_local_test_cluster():
    nodes = parse_nodes((DATA / "scontrol_nodes_hetero8.txt").read_text())
    assert [n.name for n in nodes] == [f"n{i}" for i in range(1, 9)]
    n1, n3, n8 = nodes[0], nodes[2], nodes[7]
    assert (n1.cpus, n1.gpus, n1.features, n1.memory_mb) == (8, 1, ("gpu-fast",), 15259)
    assert (n3.cpus, n3.gpus, n3.features) == (4, 0, ("cpu-mid",))
    assert (n8.cpus, n8.features, n8.partitions) == (2, ("cpu-slow",), ("debug",))


def test_nodes_of_a_site_like_cluster():
    gpu, cpu = parse_nodes(NODES_SITE)
    assert (gpu.name, gpu.cpus, gpu.memory_mb, gpu.gpus, gpu.features) == ("gpu01", 64, 512000, 4, ("a100", "ib"))
    assert gpu.partitions == ("gpu", "all")
    assert (cpu.gpus, cpu.features, cpu.state) == (0, (), "IDLE+DRAIN")


def test_unconfigured_memory_is_none():
    node = parse_nodes("NodeName=n1 CPUTot=2 RealMemory=1 State=IDLE* Gres=(null)\n")[0]
    assert node.memory_mb is None and node.state == "IDLE*"

"""The study on Dask: a local cluster of 2 worker processes gives the registry and metrics of one worker; a
worker killed mid-run leaves its run `failed` (worker lost) and the other `done`, and a second call with
`retry_failed`, on a running cluster given by its address, resumes it from its checkpoints to the same numbers;
GPU workers see only their GPU; a Slurm config file becomes the job script it describes (nothing submitted)."""
import json, os, sys, threading, time
from pathlib import Path
import psutil
import pytest
from distributed import Client, LocalCluster
from sdaanet.embedded import generate_embedded
from sdaanet.cluster import check_scheduler, jobqueue_cluster, local_cluster
from sdaanet.study import run_study, study_config

RUNS = ['baseline-1shot-separate-fold0', 'sdpm-1shot-separate-fold0']
EXTRA = [f'{RUNS[0]}:train.max_iters=40']    # time to kill that run while its second seed trains
SLURM = Path(__file__).parent / 'data' / 'slurm.yaml'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('dask')
    root = generate_embedded(d / 'emb', n_train=120, n_test=60, size_range=(65, 81), progress=False)
    return d, str(root), [f'cache_dir={d / "cache"}']


def _study(data, name, **kw):
    d, root, cache = data
    cfg = study_config('smoke', data_root=root, folds=(0,), device='cpu', only=RUNS, overrides=[*cache, *EXTRA], **kw)
    return run_study(d / name, cfg, progress=False).set_index('run_id')


def _metrics(data, name): return {r: (data[0] / name / 'runs' / r / 'metrics.csv').read_text() for r in RUNS}


@pytest.fixture(scope='module')
def one_worker(data):
    reg = _study(data, 'one', jobs=1)
    assert (reg['status'] == 'done').all(), reg[['status', 'error']]
    return reg


def test_two_workers_give_the_registry_and_metrics_of_one(data, one_worker):
    reg = _study(data, 'two', jobs=2)
    assert reg['status'].to_dict() == one_worker['status'].to_dict()
    assert (reg['started'] != '').all() and reg['seconds'].astype(float).gt(0).all()
    assert _metrics(data, 'two') == _metrics(data, 'one')


def _kill_worker(run_dir: Path, when: Path, stop: threading.Event, out: dict) -> None:
    "SIGKILL the worker process whose papermill child writes `run_dir`, once `when` exists."
    while not stop.wait(0.05):
        if not when.exists(): continue
        for p in psutil.process_iter(['cmdline']):
            cmd = p.info['cmdline'] or []
            if 'papermill' in cmd and any(str(run_dir) in c for c in cmd):
                out['papermill'] = p; p.parent().kill(); return


def test_killed_worker_fails_its_run_and_a_second_call_on_a_running_cluster_resumes_it(data, one_worker):
    """The second call goes to a running cluster by its address (`scheduler='tcp://...'`); the resumed run gives
    the numbers of the uninterrupted one."""
    victim, other = RUNS
    run_dir = data[0] / 'killed' / 'runs' / victim
    stop, out = threading.Event(), {}
    killer = threading.Thread(target=_kill_worker, args=(run_dir, run_dir / 'seed1', stop, out))
    killer.start()
    try: reg = _study(data, 'killed', jobs=2)
    finally: stop.set(); killer.join()
    assert 'papermill' in out, 'the run finished before its worker could be killed'
    assert reg.loc[victim, 'status'] == 'failed' and reg.loc[victim, 'started'] != ''
    assert reg.loc[victim, 'error'].startswith('worker lost (KilledWorker)'), reg.loc[victim, 'error']
    assert reg.loc[other, 'status'] == 'done'
    gone, alive = psutil.wait_procs([out['papermill']], timeout=10)
    assert not alive                                          # no orphan run left writing the folder
    seed0 = run_dir / 'seed0' / 'checkpoints' / 'last.pth'
    trained = seed0.stat().st_mtime_ns
    assert _study(data, 'killed', jobs=2).loc[victim, 'status'] == 'failed'   # kept without retry_failed
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=':0') as cluster:
        reg = _study(data, 'killed', scheduler=cluster.scheduler_address, retry_failed=True)
        with Client(cluster) as client: assert len(client.scheduler_info()['workers']) == 2   # the workers stay
    assert (reg['status'] == 'done').all(), reg[['status', 'error']]
    assert seed0.stat().st_mtime_ns == trained                # the finished seed was resumed, not trained again
    assert _metrics(data, 'killed') == _metrics(data, 'one')


def test_gpu_workers_see_only_their_gpu():
    with local_cluster(gpus=[0, 3], retries=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        assert sorted(client.run(lambda: os.environ['CUDA_VISIBLE_DEVICES']).values()) == ['0', '3']
        assert all(w['nthreads'] == 1 for w in client.scheduler_info()['workers'].values())
        assert cluster.scheduler.allowed_failures == 2 and cluster.scheduler.WORKER_SATURATION == 1.0


def test_slurm_config_becomes_the_job_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                               # the config's log_directory is made here
    cluster, jobs = jobqueue_cluster('slurm', SLURM, retries=1)
    with cluster: script = cluster.job_script()
    assert jobs == 4 and cluster.scheduler.allowed_failures == 1
    for line in ('#SBATCH -p gpu', '#SBATCH -A mylab', '#SBATCH --cpus-per-task=8', '#SBATCH -t 24:00:00',
                 '#SBATCH --gres=gpu:1', 'source ~/miniforge3/bin/activate sdaanet', '--nthreads 1'):
        assert line in script, line
    pbs = tmp_path / 'pbs.json'
    pbs.write_text(json.dumps(dict(cores=1, memory='16GB', queue='gpuq', resource_spec='select=1:ncpus=8:ngpus=1')))
    cluster, jobs = jobqueue_cluster('pbs', pbs, jobs=2)
    with cluster: script = cluster.job_script()
    assert jobs == 2 and '#PBS -q gpuq' in script and '#PBS -l select=1:ncpus=8:ngpus=1' in script


def test_bad_scheduler_settings_fail_before_anything_runs(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="scheduler='sge'"):
        run_study(tmp_path / 'x', study_config('smoke', scheduler='sge'))
    with pytest.raises(ValueError, match="cluster_config='c.yaml' with scheduler='local'"):
        run_study(tmp_path / 'x', study_config('smoke', cluster_config='c.yaml'))
    with pytest.raises(FileNotFoundError, match='missing.yaml'):
        run_study(tmp_path / 'x', study_config('smoke', scheduler='slurm', cluster_config=str(tmp_path / 'missing.yaml')))
    assert not (tmp_path / 'x').exists()                      # no registry, no run folder
    monkeypatch.setitem(sys.modules, 'dask_jobqueue', None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'pip install "sdaanet\[cluster\]"'):
        check_scheduler('pbs', cluster_config=SLURM)

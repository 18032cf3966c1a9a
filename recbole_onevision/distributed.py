"""Training past one process: RecBole's own distributed path (``nproc``, ``world_size``, ``ip``,
``port``, ``offset``), made to work on CPUs as well as GPUs.

:func:`spawn` starts the processes as RecBole's ``run`` does (``torch.multiprocessing.spawn``,
the result handed back through a ``SimpleQueue``); each builds its ``Config`` with its
``local_rank``, and :func:`join_group` (``Config._init_device``) joins the process group: NCCL,
one GPU per process, where CUDA is used, else gloo on the CPU (RecBole 1.2.1 only knows NCCL).
:class:`DistributedTrainerMixin` (added to every trainer by the registry) wraps the model in
``DistributedDataParallel`` itself (RecBole's wrapping names a GPU even on the CPU), shares the
checkpoint names of rank 0, and has every rank score all evaluated rows (:func:`gather_rows`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

KEYS = ("nproc", "world_size", "ip", "port", "offset")
# the collected keys with one row per evaluated row (the rest describe the dataset or model)
ROW_KEYS = ("rec.", "mv.", "data.label")


def processes(config) -> dict | None:
    """The settings of :data:`KEYS` for the processes this machine starts, resolved and checked
    (None: one process, the current one, as before)."""
    nproc, world_size = config["nproc"], config["world_size"]
    offset, ip, port = config["offset"], config["ip"], config["port"]
    for key, value, least in (("nproc", nproc, 1), ("offset", offset, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"config {key}: expected an integer >= {least}, got {value!r}")
    if nproc == 1 and world_size <= 0:
        return None
    world_size = nproc if world_size == -1 else world_size
    if not isinstance(world_size, int) or offset + nproc > world_size:
        raise ValueError(f"config world_size: {world_size!r} processes in all cannot hold this machine's nproc "
                         f"{nproc} from rank offset {offset}")
    if port is None:
        if world_size > nproc:  # the other machines must be told the port: it cannot be picked here
            raise ValueError("config port: processes on several machines (world_size > nproc) need the port "
                             "(and ip) of rank 0's machine, the same on every machine")
        port = free_port(ip)
    elif not str(port).isdigit():
        raise ValueError(f"config port: expected a port number, got {port!r}")
    return dict(nproc=nproc, world_size=world_size, ip=str(ip), port=int(port), offset=offset)


def free_port(ip: str = "localhost") -> int:
    """A port nobody listens on now (rank 0 binds it a moment later; another program could take it
    in between, then the run fails at once and a rerun picks another)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def spawn(target, spec: dict, args: tuple):
    """``target(rank, queue, spec, *args)`` in ``spec['nproc']`` new processes; what local rank 0
    puts in the queue (None if nothing). A failure in any process stops the others and is raised
    here: an exception the target put in the queue as itself, else with the process's traceback."""
    import torch.multiprocessing as mp

    # a SimpleQueue of the spawn context: the children are spawned, not forked (CUDA cannot fork)
    queue = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(target, args=(queue, dict(spec), *args), nprocs=spec["nproc"], join=True)
    except mp.ProcessRaisedException:
        reported = None if queue.empty() else queue.get()
        if isinstance(reported, Exception):  # what the target put there: bad input, not a crash
            raise reported from None
        raise
    return None if queue.empty() else queue.get()


def join_group(final: dict) -> None:
    """``Config._init_device`` of one process of several: join the group, pick the device and
    quieten the processes other than each machine's first (RecBole's choices: they log errors only)."""
    gpu_id = final["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    final["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    local_rank, nproc = final["local_rank"], final["nproc"]
    cuda = bool(gpu_id) and torch.cuda.is_available()  # RecBole's own rule for one process
    if cuda and torch.cuda.device_count() < nproc:
        raise ValueError(f"config nproc: {nproc} processes need {nproc} GPUs, one each; gpu_id {gpu_id!r} makes "
                         f"{torch.cuda.device_count()} visible (or set gpu_id to '' for CPU processes)")
    dist.init_process_group("nccl" if cuda else "gloo", rank=local_rank + final["offset"],
                            world_size=final["world_size"], init_method=f"tcp://{final['ip']}:{final['port']}")
    if cuda:
        torch.cuda.set_device(local_rank)
        final["device"] = torch.device("cuda", local_rank)
    else:  # the machine's threads are shared by its processes: each taking them all thrashes
        torch.set_num_threads(max(1, torch.get_num_threads() // nproc))
        final["device"] = torch.device("cpu")
    final["single_spec"] = False
    if local_rank != 0:
        final.update(state="error", show_progress=False, verbose=False)


def several(config) -> bool:
    return not config["single_spec"]


def writes_files(config) -> bool:
    """Whether this process writes the run's files: each machine's first does (RecBole's rule for
    checkpoints: every machine then has them to read back, shared folder or not)."""
    return config["single_spec"] or config["local_rank"] == 0


@contextlib.contextmanager
def first_process_first(config):
    """Each machine's first process runs the block before the others do (they wait at a barrier):
    the SIDs are fitted once and cached, and the others load that cache instead of fitting them
    again on the same cores (with ``vrq_cache: False`` each fits; :func:`same_on_every_rank` checks)."""
    waits = several(config) and config["local_rank"] != 0
    if waits:
        dist.barrier()
    yield
    if several(config) and not waits:
        dist.barrier()


def same_on_every_rank(tensor: torch.Tensor, what: str) -> None:
    """Raise unless ``tensor`` is the same in every process (e.g. the fitted SIDs: a process with
    others would train embeddings of other codes under the same averaged gradients)."""
    digest = hashlib.sha1(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"{what} differ between processes ({digests}); fit them once (a shared vrq_cache_dir) "
                           "and start again")


def gather_rows(struct, sampler):
    """Every process's collected rows in ``struct`` (RecBole's ``DataStruct``), in rank order, so
    each process computes every metric on all rows: exact for any metric (coverage, Gini and the
    plugin's metrics over a subset of rows are not means RecBole's ``_map_reduce`` could weight).
    ``sampler`` is the evaluated loader's ``DistributedSampler``; the row it repeats to give every
    process as many rows (at most one per process, its last) is dropped."""
    repeated = sampler.rank + (sampler.num_samples - 1) * sampler.num_replicas >= len(sampler.dataset)
    mine = {}
    for key, value in struct._data_dict.items():
        if isinstance(value, torch.Tensor) and key.startswith(ROW_KEYS):
            # rows that are not one per sampled index (sampled negatives' labels) keep the repeat
            mine[key] = value[:-1] if repeated and len(value) == sampler.num_samples else value
    parts = [None] * sampler.num_replicas
    dist.all_gather_object(parts, mine)
    for key in mine:
        struct.set(key, torch.cat([part[key] for part in parts]))
    return struct


def broadcast(value):
    """Rank 0's ``value`` in every process."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DistributedTrainerMixin:
    """Trainer mixin for several processes (nothing changes in one)."""

    def __init__(self, config, model):
        if not several(config):
            super().__init__(config, model)
            return
        cuda = config["device"].type == "cuda"
        if cuda:  # as RecBole does, before the optimizer takes the parameters (SyncBatchNorm needs CUDA)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # RecBole's AbstractTrainer wraps with device_ids=[local_rank], which DDP refuses for a
        # CPU model; the flag keeps it from wrapping, and the model is wrapped below instead
        config["single_spec"] = True
        # RecBole's ensure_dir checks, then creates: two processes racing there fail with
        # FileExistsError, so every process makes the folder first, tolerating the others
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = False
        # buffers are sent from rank 0 at every step only where training changes them (batch norm
        # statistics); the others (photo features, SID tables) are the same everywhere and large
        running = any(isinstance(m, _BatchNorm) for m in self.model.modules())
        self.distributed_model = DistributedDataParallel(
            self.model, device_ids=[config["local_rank"]] if cuda else None, forward_sync_buffers=running)
        # every process reads the checkpoints back (a stage's best, the test's): rank 0 names them
        self.saved_model_file = broadcast(self.saved_model_file)

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        super()._save_checkpoint(epoch, verbose, **kwargs)
        if several(self.config):  # written before any process goes on to read it
            dist.barrier()

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if several(self.config) and eval_data:
            self.eval_collector.shard = eval_data.sampler  # MultiViewCollector gathers every rank's rows
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def _map_reduce(self, result, num_sample):
        # every process already computed the metrics on all rows (gather_rows); RecBole's
        # reduction would weight each process's means by its count of batches, not of rows
        return result

"""instrument: every hook the package puts into torch, and every private
torch name it relies on, in one module.

What to record lives in ``recorder.py`` and ``strategies/pipeline.py``;
this module holds only the mechanics: each hook is a context manager that
installs it on entry and removes it on exit, calling back into small
functions its caller passes.

  stage_hooks          a PipelineStage's per-micro-batch methods and its
                       shape-inference set-up (``_prepare_*_infra``)
  batch_p2p_hook       ``schedules._batch_p2p``, where every pipeline
                       schedule posts its sends and receives
  work_wait_hook       ``Work.wait`` (torch's pybind class)
  collective_dispatch  a TorchDispatchMode that sees the collectives DTensor
                       and FSDP lower to, keyed on their op names
  quiet_known_warnings the warnings torch gives about choices this package
                       made on purpose, silenced for one block only

``PRIVATE_NAMES`` lists each private name (module and attribute path, the
ops by their names under ``torch.ops``); ``check_torch_internals()`` says
which of them the installed torch lacks. The torch range in
``pyproject.toml`` is the one tests/test_torch_internals.py has passed on.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import torch

# --------------------------------------------------------------------------
# The private names


@dataclass(frozen=True)
class PrivateName:
    """A private torch name: ``path`` (dotted) inside the module ``module``,
    and what the package uses it for."""

    module: str
    path: str
    use: str

    def __str__(self) -> str:
        return f"{self.module}:{self.path}"

    def resolve(self) -> Any:
        """The object the name stands for; ImportError or AttributeError
        when the installed torch lacks it."""
        if self.path == _PIPELINE_ORDER:
            return _built_schedule().pipeline_order
        obj = importlib.import_module(self.module)
        for part in self.path.split("."):
            obj = getattr(obj, part)
        return obj


_SCHEDULES = "torch.distributed.pipelining.schedules"
_PIPELINE_ORDER = "ScheduleGPipe(stand-in stage).pipeline_order"

FUNCTIONAL_COLLECTIVES = {"all_reduce": "all_reduce", "all_gather_into_tensor": "all_gather",
                          "reduce_scatter_tensor": "reduce_scatter"}
"""Ops under ``torch.ops._c10d_functional`` (DTensor's collectives) -> the recorded kind."""
C10D_COLLECTIVES = {"allreduce_": "all_reduce", "_allgather_base_": "all_gather",
                    "_reduce_scatter_base_": "reduce_scatter", "broadcast_": "broadcast"}
"""Ops under ``torch.ops.c10d`` (FSDP's collectives, ZeroRedundancyOptimizer's
broadcasts) -> the recorded kind."""

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    PrivateName("torch.distributed.pipelining", "PipelineStage.forward_one_chunk", "forward span per micro-batch"),
    PrivateName("torch.distributed.pipelining", "PipelineStage.backward_one_chunk", "backward span per micro-batch"),
    PrivateName("torch.distributed.pipelining", "PipelineStage.backward_weight_one_chunk",
                "backward_weight span (zero-bubble)"),
    PrivateName("torch.distributed.pipelining", "PipelineStage._prepare_forward_infra",
                "shape inference labelled set-up; buffers restored after it"),
    PrivateName("torch.distributed.pipelining", "PipelineStage._prepare_backward_infra",
                "the last stage's set-up loss kept off the timeline"),
    PrivateName(_SCHEDULES, "_batch_p2p", "timing every pipeline send and receive"),
    PrivateName(_SCHEDULES, "PipelineScheduleSingle", "one stage per rank or several"),
    PrivateName(_SCHEDULES, "FORWARD", "schedule_table"),
    PrivateName(_SCHEDULES, "FULL_BACKWARD", "schedule_table"),
    PrivateName(_SCHEDULES, "BACKWARD_INPUT", "schedule_table"),
    PrivateName(_SCHEDULES, "BACKWARD_WEIGHT", "schedule_table"),
    PrivateName(_SCHEDULES, "_Action.stage_index", "schedule_table"),
    PrivateName(_SCHEDULES, "_Action.computation_type", "schedule_table"),
    PrivateName(_SCHEDULES, "_Action.microbatch_index", "schedule_table"),
    PrivateName(_SCHEDULES, "_Action.sub_actions", "schedule_table (fused actions)"),
    PrivateName(_SCHEDULES, _PIPELINE_ORDER, "schedule_table: the table a schedule builds"),
    PrivateName("torch.distributed.pipelining._backward", "stage_backward", "predict: split-backward replay"),
    PrivateName("torch.distributed.pipelining._backward", "stage_backward_input", "predict: split-backward replay"),
    PrivateName("torch.distributed.pipelining._backward", "stage_backward_weight", "predict: split-backward replay"),
    PrivateName("torch.utils._python_dispatch", "TorchDispatchMode", "collective_dispatch"),
    PrivateName("torch._ops", "HigherOrderOperator", "collective_dispatch passes these through"),
    *(PrivateName("torch.ops", f"_c10d_functional.{op}", "collective_dispatch (DTensor)")
      for op in (*FUNCTIONAL_COLLECTIVES, "wait_tensor")),
    *(PrivateName("torch.ops", f"c10d.{op}", "collective_dispatch (FSDP, ZeRO-1)") for op in C10D_COLLECTIVES),
    PrivateName("torch.distributed.distributed_c10d", "Work.wait", "work_wait_hook"),
    PrivateName("torch.distributed.distributed_c10d", "Work.unbox", "a c10d collective's future"),
    PrivateName("torch.distributed.distributed_c10d", "ProcessGroup.unbox", "a c10d collective's group"),
    PrivateName("torch.distributed.distributed_c10d", "_resolve_process_group", "a functional collective's group"),
    PrivateName("torch.distributed", "_DEFAULT_FIRST_BUCKET_BYTES", "mirrored in predict.formulas"),
    PrivateName("torch.nn.parallel.distributed", "_DEFAULT_BUCKET_CAP_MB", "mirrored in predict.formulas"),
    PrivateName("torch.nn.modules.batchnorm", "_BatchNorm", "base of CpuSyncBatchNorm"),
    PrivateName("torch.testing._internal.distributed.fake_pg", "FakeStore", "plan: fake_process_group"),
    PrivateName("torch._subclasses.fake_tensor", "FakeTensorMode", "plan: shapes without memory"),
    PrivateName("torch.nn.parallel.distributed", "_verify_param_shape_across_processes",
                "plan: skipped under a fake process group (unchecked_ddp_shapes)"),
    PrivateName("torch", "UntypedStorage._cdata", "storage_key of a fake tensor's storage"),
    PrivateName("torch._subclasses.fake_tensor", "unset_fake_temporarily", "plan: real_device_meshes"),
    PrivateName("torch.distributed.tensor.debug", "_clear_sharding_prop_cache",
                "fake_process_group: DTensor's cached shardings forgotten with the group"),
    PrivateName("torch.distributed.tensor._redistribute", "_gen_transform_infos",
                "fake_process_group: DTensor's cached redistributions forgotten with the group"),
)


def check_torch_internals() -> list[str]:
    """The private names (``str(PrivateName)``, with the error) that the
    installed torch lacks; [] when all resolve."""
    missing = []
    for name in PRIVATE_NAMES:
        try:
            name.resolve()
        except (ImportError, AttributeError, TypeError, ValueError) as e:
            missing.append(f"{name}: {type(e).__name__}: {e}")
    return missing


# --------------------------------------------------------------------------
# Names used through this module


def _schedules():
    from torch.distributed.pipelining import schedules

    return schedules


def stage_backward_functions() -> tuple[Callable, Callable, Callable]:
    """torch.distributed.pipelining's own backward of a stage:
    (stage_backward, stage_backward_input, stage_backward_weight)."""
    from torch.distributed.pipelining._backward import stage_backward, stage_backward_input, stage_backward_weight

    return stage_backward, stage_backward_input, stage_backward_weight


BatchNormBase = torch.nn.modules.batchnorm._BatchNorm
"""The base class of every BatchNorm (``nn.modules.batchnorm._BatchNorm``)."""


def ddp_default_bucket_bytes() -> tuple[int, int]:
    """DDP's default bucket caps in bytes, as torch holds them: (first
    bucket, every later bucket)."""
    import torch.distributed as dist
    from torch.nn.parallel import distributed as ddp

    return dist._DEFAULT_FIRST_BUCKET_BYTES, ddp._DEFAULT_BUCKET_CAP_MB * 1024 * 1024


def is_single_stage_schedule(cls: type) -> bool:
    """True for schedules built on one stage per rank (gpipe, 1f1b)."""
    return issubclass(cls, _schedules().PipelineScheduleSingle)


def planned_actions(schedule) -> dict[int, list[tuple[str, int, int]]]:
    """The compute actions of the table a built schedule holds
    (``pipeline_order``): rank -> [(kind, stage, micro_batch)], kind one of
    forward, backward, backward_input, backward_weight; idle slots (None)
    and gradient reductions left out, fused actions unpacked."""
    s = _schedules()
    kinds = {s.FORWARD: "forward", s.FULL_BACKWARD: "backward", s.BACKWARD_INPUT: "backward_input",
             s.BACKWARD_WEIGHT: "backward_weight"}
    table = {}
    for rank in sorted(schedule.pipeline_order):
        table[rank] = []
        for action in schedule.pipeline_order[rank]:
            for a in (action.sub_actions or (action,)) if action is not None else ():
                if a.computation_type in kinds:
                    table[rank].append((kinds[a.computation_type], a.stage_index, a.microbatch_index))
    return table


def _built_schedule():
    """A gpipe schedule of two stages built from a stand-in stage (what its
    constructor reads), without a process group."""
    from types import SimpleNamespace

    from torch.distributed.pipelining import ScheduleGPipe

    stage = SimpleNamespace(stage_index=0, num_stages=2, group_size=2, group_rank=0, is_first=True,
                            is_last=False, submod=None)
    return ScheduleGPipe(stage, n_microbatches=2)


def storage_key(storage) -> int:
    """Identifies a tensor's storage while it lives (views share it): its
    address; for a fake or meta tensor, which has none, the storage object
    itself (``_cdata``). 0 for an empty real storage."""
    if storage.device.type == "meta":
        return storage._cdata
    return storage.data_ptr()


@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int) -> Iterator[None]:
    """torch's fake process group (backend "fake", ``FakeStore``) as the
    default group of this process, as rank ``rank`` of ``world_size``:
    collectives return at once and move nothing. Destroyed on exit.
    RuntimeError when a default group exists already."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the backend

    if dist.is_initialized():
        raise RuntimeError("a process group is initialised in this process already: plan outside a run's rank")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()
        _forget_dtensor_shardings()


def _forget_dtensor_shardings() -> None:
    """Empty DTensor's caches of sharding decisions: they keep the device
    meshes they were made on, whose process groups a destroyed group took
    with it (the next fake group's meshes compare equal to them)."""
    from torch.distributed.tensor import _redistribute
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()  # the Python cache and the C++ fast path's
    _redistribute._gen_transform_infos.cache_clear()
    _redistribute.clear_redistribute_planner_cache()


def fake_tensor_mode():
    """A ``FakeTensorMode``: tensors made inside it have shapes, dtypes and
    devices but no memory. Real tensors made before it (a device mesh's
    table of ranks) may take part in its ops."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


@contextlib.contextmanager
def real_device_meshes() -> Iterator[None]:
    """Every DeviceMesh made inside the block (FSDP2 makes one of its dp
    and tp meshes) is made outside any FakeTensorMode: its table of ranks
    is a small real tensor it reads (which rank sits where)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.device_mesh import DeviceMesh

    original = DeviceMesh.__init__

    def init(self, *args, **kwargs):
        with unset_fake_temporarily():
            original(self, *args, **kwargs)

    DeviceMesh.__init__ = init
    try:
        yield
    finally:
        DeviceMesh.__init__ = original


@contextlib.contextmanager
def unchecked_ddp_shapes() -> Iterator[None]:
    """DDP without its check that every rank holds parameters of the same
    shapes (``_verify_param_shape_across_processes``), which reads the
    parameters' memory: under a fake process group there is one rank, and
    fake parameters have none."""
    from torch.nn.parallel import distributed as ddp

    original = ddp._verify_param_shape_across_processes
    ddp._verify_param_shape_across_processes = lambda process_group, tensors, logger=None: None
    try:
        yield
    finally:
        ddp._verify_param_shape_across_processes = original


def wait_tensor(t: torch.Tensor) -> torch.Tensor:
    """Wait for a functional collective's result."""
    return torch.ops._c10d_functional.wait_tensor(t)


def process_group_named(group_name: str):
    """The ProcessGroup a functional collective names by string."""
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


def unbox_process_group(arg):
    """The ProcessGroup behind a c10d op's group argument, else None."""
    if isinstance(arg, (torch.Tensor, list, tuple, int, float, bool)) or arg is None:
        return None
    import torch.distributed as dist

    try:
        return dist.ProcessGroup.unbox(arg)
    except (RuntimeError, TypeError, AttributeError):
        return None


def work_future(work):
    """The future of the Work a c10d op returns (boxed); RuntimeError or
    AttributeError when its backend gives none."""
    import torch.distributed as dist

    return dist.distributed_c10d.Work.unbox(work).get_future()


# --------------------------------------------------------------------------
# Hooks, each installed and removed by a context manager

Around = Callable[..., ContextManager]
"""A function of the hooked call's leading argument(s) returning the
context manager to run the call in."""

STAGE_METHODS = ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk",
                 "_prepare_forward_infra", "_prepare_backward_infra")


@contextlib.contextmanager
def instance_methods(obj: Any, wrappers: dict[str, Callable[[Callable], Callable]]) -> Iterator[None]:
    """Set ``obj.NAME = wrap(obj.NAME)`` for each (NAME, wrap) on this one
    instance; on exit put back what the instance held (delete the
    attribute when the class provided it). Names ``obj`` lacks are skipped."""
    saved = []
    try:
        for name, wrap in wrappers.items():
            original = getattr(obj, name, None)
            if original is None:
                continue
            saved.append((name, obj.__dict__.get(name, _MISSING)))
            setattr(obj, name, wrap(original))
        yield
    finally:
        for name, before in reversed(saved):
            if before is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, before)


_MISSING = object()


def stage_hooks(stage, *, forward: Around | None = None, backward: Around | None = None,
                backward_input: Around | None = None, backward_weight: Around | None = None,
                setup_forward: Around | None = None, setup_backward: Around | None = None) -> ContextManager:
    """Run a PipelineStage's calls inside the caller's context managers:

      forward(micro_batch)          each forward_one_chunk
      backward(micro_batch)         each full backward_one_chunk (input and
                                    weight gradients)
      backward_input(micro_batch)   each backward_one_chunk with
                                    full_backward=False (zero-bubble
                                    schedules: input gradients only);
                                    ``backward`` when not given
      backward_weight(micro_batch)  each backward_weight_one_chunk
      setup_forward()               the first step's shape inference
                                    (``_prepare_forward_infra``)
      setup_backward()              the last stage's set-up loss and
                                    backward (``_prepare_backward_infra``)

    Installed on this stage instance only, removed on exit."""

    def per_chunk(around: Around):
        def wrap(method):
            def call(chunk, *args, **kwargs):
                with around(chunk):
                    return method(chunk, *args, **kwargs)
            return call
        return wrap

    def whole(around: Around):
        def wrap(method):
            def call(*args, **kwargs):
                with around():
                    return method(*args, **kwargs)
            return call
        return wrap

    def full_or_inputs(method):
        def call(chunk, *args, **kwargs):
            # backward_one_chunk(chunk, loss=None, full_backward=True, last_backward=False)
            full = kwargs.get("full_backward", args[1] if len(args) > 1 else True)
            around = backward if full else (backward_input or backward)
            if around is None:
                return method(chunk, *args, **kwargs)
            with around(chunk):
                return method(chunk, *args, **kwargs)
        return call

    chosen = {"forward_one_chunk": (forward, per_chunk),
              "backward_weight_one_chunk": (backward_weight, per_chunk),
              "_prepare_forward_infra": (setup_forward, whole),
              "_prepare_backward_infra": (setup_backward, whole)}
    wrappers = {name: how(around) for name, (around, how) in chosen.items() if around is not None}
    if backward is not None or backward_input is not None:
        wrappers["backward_one_chunk"] = full_or_inputs
    return instance_methods(stage, wrappers)


@contextlib.contextmanager
def batch_p2p_hook(around: Callable[[list, Callable[[], list]], list]) -> Iterator[None]:
    """Route every batch of point-to-point ops a pipeline schedule posts
    through ``around(ops, post)``, which must call ``post()`` (posting them
    and returning their works) and return the works the schedule waits on.
    The single-stage schedules, PipelineScheduleMulti and the runtime of the
    multi-stage ones all post through ``schedules._batch_p2p``."""
    schedules = _schedules()
    original = schedules._batch_p2p

    def batch_p2p(p2p_ops, desc=None):
        return around(p2p_ops, lambda: original(p2p_ops, desc))

    schedules._batch_p2p = batch_p2p
    try:
        yield
    finally:
        schedules._batch_p2p = original


@contextlib.contextmanager
def work_wait_hook(around: Callable[[Callable[[], Any]], Any]) -> Iterator[None]:
    """Route every ``Work.wait()`` in this process (any thread) through
    ``around(wait)``, which must call ``wait()`` and return its result."""
    import torch.distributed as dist

    work_cls = dist.distributed_c10d.Work
    original = work_cls.wait

    def wait(self, *args, **kwargs):
        return around(lambda: original(self, *args, **kwargs))

    work_cls.wait = wait
    try:
        yield
    finally:
        work_cls.wait = original


Handler = Callable[[str, Callable, tuple, dict], Any]


@contextlib.contextmanager
def collective_dispatch(on_functional: Handler, on_c10d: Handler) -> Iterator[None]:
    """Call ``on_functional(kind, op, args, kwargs)`` for each functional
    collective (``torch.ops._c10d_functional``, DTensor's) and
    ``on_c10d(kind, op, args, kwargs)`` for each c10d collective
    (``torch.ops.c10d``, FSDP's) this thread dispatches; kind is one of
    all_reduce, all_gather, reduce_scatter, broadcast (``FUNCTIONAL_COLLECTIVES``,
    ``C10D_COLLECTIVES``). Each handler runs ``op(*args, **kwargs)`` and
    returns its result. Every other op runs as it would."""
    from torch.distributed.tensor import DTensor
    from torch.utils._python_dispatch import TorchDispatchMode

    tables = {"_c10d_functional": (FUNCTIONAL_COLLECTIVES, on_functional), "c10d": (C10D_COLLECTIVES, on_c10d)}

    class CollectiveDispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if any(issubclass(t, DTensor) for t in types):
                return NotImplemented  # let DTensor lower itself to plain collectives first
            if isinstance(func, torch._ops.HigherOrderOperator):
                return func(*args, **kwargs)
            kinds, handler = tables.get(func.namespace, ({}, None))
            kind = kinds.get(func.overloadpacket.__name__)
            if kind is None:
                return func(*args, **kwargs)
            return handler(kind, func, args, kwargs)

    with CollectiveDispatch():
        yield


# --------------------------------------------------------------------------
# Warnings

KNOWN_WARNINGS = (
    # The pipeline wraps stages in DDP with find_unused_parameters=True so
    # that DDP never rebuilds its buckets after several micro-batches ran
    # backward under no_sync in the first step.
    ".*find_unused_parameters=True was specified.*",
    # Blocks return views (reshape, slicing) but never modify them in place,
    # the case FSDP warns about.
    "FSDP2-wrapped module .* returned a view tensor",
    # Its suggested successor, _functional_collectives.all_reduce, has no
    # backward; CpuSyncBatchNorm needs the all-reduce of the gradients.
    "torch.distributed.nn.functional.all_reduce is deprecated",
    # Gathering a DTensor of a 2-D mesh whole goes dim by dim.
    ".*sequential all_gather.*",
    # Importing torch.distributed.optim (ZeroRedundancyOptimizer, ZeRO
    # stage 1) scripts its functional optimizers with torch.jit.
    "`torch.jit.script` is deprecated",
    "`torch.jit.interface` is deprecated",
)


@contextlib.contextmanager
def quiet_known_warnings() -> Iterator[None]:
    """Ignore ``KNOWN_WARNINGS`` inside the block; the caller's warning
    filters are as they were after it (``warnings.catch_warnings``)."""
    with warnings.catch_warnings():
        for message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield

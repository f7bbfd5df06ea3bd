"""The job file: TOML validated by pydantic, so every mistake names its field and the allowed values."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shoal.errors import ShoalError

# Bounds every numeric field keeps, whatever its own: torch and numpy take int64 at most, and a float must be finite.
MAX_INT = 2**53
Width = Annotated[int, Field(ge=1, le=2**24)]  # a layer's width or channel count
Unit = Annotated[float, Field(ge=0.0, lt=1.0)]  # an Adam beta
Positive = Annotated[float, Field(gt=0.0)]


def _too_large(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > MAX_INT
    if isinstance(value, (list, tuple)):
        return any(_too_large(v) for v in value)
    if isinstance(value, dict):
        return any(_too_large(v) for v in value.values())
    return False


class Section(BaseModel):
    """Every section: unknown keys refused, floats finite (no inf, no nan), integers at most 2**53 in size."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _within_int64(cls, value: Any) -> Any:
        if _too_large(value):
            raise ValueError("out of range: integers here must lie within +-2**53")
        return value


class ModelConfig(Section):
    """Which network to train."""

    name: str = Field("mlp", description="built-in `mlp`, `cnn` or `gpt`, a transformers model `hf:gpt2` (docs/models.md), "
                      "or a factory `package.module:function`")
    hidden: list[Width] = Field([128], max_length=1024, description="mlp: widths of the hidden layers")
    channels: list[Width] = Field([16, 32], min_length=2, max_length=2, description="cnn: channels of its two conv layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier (0 keeps runs exactly reproducible across world sizes)")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments passed to a factory; for hf: models, the transformers config's keys")
    layers: int = Field(4, ge=1, le=4096, description="gpt: transformer blocks")
    dim: int = Field(128, ge=1, le=2**20, description="gpt: model width")
    heads: int = Field(4, ge=1, le=2**16, description="gpt: attention heads (must divide dim, and be divisible by parallel.tp)")
    mlp_ratio: int = Field(4, ge=1, le=1024, description="gpt: MLP width / model width")
    tie_head: bool = Field(False, description="gpt: share the embedding matrix with the output head (not with parallel.pp > 1)")


class DataConfig(Section):
    """Where samples come from and how they are split across ranks."""

    name: str = Field("digits", description="mnist | digits | synthetic | npz | parquet | shakespeare (characters, for model.name = gpt)")
    path: str = Field("", description="npz file or parquet file/directory (a `shoal prep` output with manifest.json)")
    features: list[str] = Field([], description="parquet: feature columns (default: the manifest's)")
    label: str = Field("", description="parquet: label column (default: the manifest's)")
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share held out for evaluation when the source has no test split")
    limit_train: int = Field(0, ge=0, description="use only the first N training samples (0 = all)")
    limit_eval: int = Field(0, ge=0, description="use only the first N evaluation samples (0 = all)")
    partition: Literal["contiguous", "round_robin", "random"] = Field("contiguous", description="how samples are dealt to ranks")
    partition_scope: Literal["batch", "dataset"] = Field(
        "batch",
        description="batch: every global batch is dealt to ranks, so results do not depend on the world size; "
        "dataset: each rank owns a fixed shard for the whole run (data stays where it is)",
    )
    shuffle: bool = Field(True, description="reshuffle the sample order every epoch (seeded)")
    drop_last: bool = Field(False, description="drop the final global batch when it is smaller than the rest")
    synthetic_samples: int = Field(4096, ge=1, le=100_000_000, description="synthetic: number of samples")
    synthetic_features: int = Field(32, ge=1, le=2**20, description="synthetic: features per sample")
    synthetic_classes: int = Field(4, ge=2, le=2**20, description="synthetic: number of classes")
    seq_len: int = Field(64, ge=1, le=2**20, description="shakespeare: characters per training sequence")
    task: Literal["auto", "classify", "lm"] = Field("auto", description="classify: one label per sample; lm: next-token prediction (labels, "
                                                    "else input_ids, shifted by one); auto: lm for shakespeare and token labels shaped like input_ids")
    prefetch: Literal["auto", "on", "off"] = Field(
        "auto", description="read the next step's batch in a background thread (auto: for index-based data sets, whose "
        "samples draw no random numbers)")
    read: Literal["auto", "all", "rank", "stream"] = Field(
        "auto", description="parquet: rank = each rank holds only the rows it uses (1/N of them); stream = rows read in blocks, "
        "never all in memory, position in the checkpoint; all = every rank holds every row; auto = rank where the batch plan "
        "is known in advance, else all (docs/data.md)")
    stream_block_rows: int = Field(65536, ge=1, le=2**31, description="read = stream: rows per block, the unit of reading and "
                                   "of shuffling (block order and the rows inside a block are shuffled, seeded)")
    lanes: int = Field(0, ge=0, le=2**20, description="parquet, read = rank or stream: 0 = rows shuffled over the whole file (each rank "
                       "decodes every row group, keeps 1/N); L = row groups (stream: blocks) dealt to L lanes each epoch, every batch "
                       "draws from all, each rank reads only its lanes: 1/N of the file. A multiple of the data-parallel ranks; the "
                       "order depends on L, not on the world (docs/data.md)")


class OptimizerConfig(Section):
    name: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum and nesterov below) or adamw (decoupled weight decay)")
    lr: float = Field(0.05, gt=0.0, description="learning rate: the peak of the schedule")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    weight_decay: float = Field(0.0, ge=0.0, description="sgd: L2 penalty added to the gradient; adamw: decoupled decay")
    betas: tuple[Unit, Unit] = Field((0.9, 0.999), description="adamw only: each in [0, 1)")
    eps: float = Field(1e-8, gt=0.0, description="adamw only")


class ScheduleConfig(Section):
    name: Literal["constant", "cosine"] = Field("constant", description="constant, or cosine decay to min_lr_ratio * lr")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 over this many optimizer steps")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine: the learning rate at the end, as a fraction of lr")


class TrainConfig(Section):
    global_batch_size: int = Field(64, ge=1, description="samples per optimizer step, summed over ranks and accumulation steps")
    epochs: int = Field(1, ge=0, description="passes over the training set (used when steps = 0)")
    steps: int = Field(0, ge=0, description="optimizer steps; 0 = run `epochs` epochs")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    clip_grad_norm: float = Field(0.0, ge=0.0, description="clip the global gradient norm to this (0 = off)")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = at the end of every epoch)")
    log_every: int = Field(10, ge=1, description="write a training record every N steps")
    threads: int = Field(0, ge=0, le=4096, description="torch threads per process (0 = cores / processes)")
    keep_freed_memory: bool = Field(
        True, description="Linux/glibc: keep freed memory in the heap between steps instead of page-faulting it back each step")
    on_nonfinite: Literal["fail", "skip", "rollback"] = Field(
        "fail", description="a NaN/inf gradient: fail naming the step, skip that step, or roll back to the newest checkpoint")
    max_nonfinite: int = Field(3, ge=1, description="skip/rollback: stop after this many non-finite steps")
    loss: str = Field("auto", description="auto (lm data: lm, else cross_entropy) | cross_entropy | lm (next-token cross-entropy, mean over the "
                      "global batch's scored tokens) | mse | model (the model's own .loss, labels passed in) | 'package.module:function'")
    output_key: str = Field("logits", description="the entry of a dict / ModelOutput the loss and metrics score (a tuple: its first element)")


class CommConfig(Section):
    """Gradient compression on the data-parallel gradient reduce (docs/compression.md)."""

    compression: str = Field("none", description="gradient compression: none | fp16 | bf16 | topk | randk | qsgd | int8 | powersgd | "
                             "auto (measures link and compute at start, then picks), or one a plugin registers (`comm.hook`: its old name)")
    topk_ratio: float = Field(0.01, gt=0.0, le=1.0, description="topk, randk: share of each gradient tensor's entries sent per step (at least one)")
    qsgd_levels: int = Field(127, ge=1, le=32767, description="qsgd: quantization levels s per sign (up to 127 travel in one byte, up to 32767 in two)")
    error_feedback: bool = Field(True, description="topk, randk: add what a step did not send to the next step's gradient")
    powersgd_rank: int = Field(4, ge=1, description="rank of the PowerSGD low-rank approximation")
    powersgd_warmup: int = Field(10, ge=0, description="plain all-reduce steps before PowerSGD starts")
    powersgd_factors: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="what PowerSGD's P and Q (and the vectors it sends whole) travel as: fp32 is torch's hook; fp16 or bf16 "
                            "halve its bytes (scaled by a power of two, so tiny gradients keep their bits) and send the vectors with P (two collectives "
                            "a bucket, not three); the factors are kept in fp32")
    bucket_mb: float = Field(0.0, ge=0.0, le=1e6, description="DDP gradient bucket size in MB (0: DDP's 1 MB first bucket, then "
                             "25 MB); a bucket is reduced while backward goes on, so one above the model's size turns that overlap off")

    @model_validator(mode="before")
    @classmethod
    def _hook_is_the_old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hook" in data:
            data = dict(data)
            hook = data.pop("hook")
            if "compression" in data and data["compression"] != hook:
                raise ValueError(f"hook = {hook!r} and compression = {data['compression']!r} differ: hook is the old name of compression, keep one")
            data["compression"] = hook
        return data

    @property
    def hook(self) -> str:
        """The old name of `compression`: code that reads it keeps working."""
        return self.compression


class PSConfig(Section):
    """sync = "param_server": servers hold the parameters and run the optimizer; workers push gradients (docs/param_server.md)."""

    servers: int = Field(1, ge=1, le=64, description="ranks that serve parameters (the first ones); the rest are workers, sharded by size over the servers")
    mode: Literal["sync", "async", "ssp"] = Field("sync", description="sync: every worker's gradient of a step applied together (equals data "
                                                  "parallel); async: each push applied on arrival; ssp: at most `staleness` steps ahead of the slowest")
    staleness: int = Field(2, ge=0, le=1_000_000, description="ssp: how many steps a worker may run ahead of the slowest worker")
    rejoin: bool = Field(False, description="async, ssp: a worker whose training process dies is started again alone and rejoins "
                         "with the current parameters; the others go on without it meanwhile. Checkpoints are the servers' "
                         "(several write one together), written alone every checkpoint.every of worker 0's steps "
                         "(docs/param_server.md)")


class AverageConfig(Section):
    """sync = "average": each rank trains `every` local steps, then parameters are averaged (local SGD, DiLoCo)."""

    every: int = Field(8, ge=1, le=1_000_000, description="local optimizer steps between two averagings (H)")
    weights: Literal["equal", "samples", "score"] = Field("equal", description="equal; samples: by each rank's samples since the "
                                                          "last averaging; score: by each rank's accuracy on `score_samples` evaluation samples")
    score_samples: int = Field(512, ge=1, le=10_000_000, description="weights = score: evaluation samples each rank scores its replica on")
    outer: Literal["none", "diloco"] = Field("none", description="diloco: the averaged change is a pseudo-gradient for an outer Nesterov SGD")
    outer_lr: float = Field(0.7, gt=0.0, le=100.0, description="diloco: outer learning rate (1 with outer_momentum 0 is plain averaging)")
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="diloco: outer Nesterov momentum")


class FederatedConfig(Section):
    """sync = "federated": FedAvg; each rank is a client that reads only its own data, and only parameters travel."""

    rounds: int = Field(10, ge=1, le=1_000_000, description="communication rounds (they replace train.epochs and train.steps)")
    local_epochs: int = Field(1, ge=1, le=100_000, description="epochs over its own data a client trains in each round")
    clients_per_round: int = Field(0, ge=0, le=1_000_000, description="clients sampled each round (seeded); 0 = every client")
    split: Literal["iid", "label_skew", "dirichlet"] = Field("iid", description="how samples are dealt to clients: iid; label_skew: "
                                                             "`labels_per_client` classes each; dirichlet: class shares drawn with concentration `alpha`")
    labels_per_client: int = Field(2, ge=1, le=1_000_000, description="split = label_skew: classes each client holds")
    alpha: float = Field(0.5, gt=0.0, le=1e6, description="split = dirichlet: concentration (small: skewed, large: near iid)")
    prox_mu: float = Field(0.0, ge=0.0, le=1e6, description="> 0: FedProx, adds mu/2 |w - w_round|^2 to each client's loss")


class DistConfig(Section):
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto = nccl with CUDA, gloo otherwise")
    timeout_s: float = Field(300.0, gt=0.0, le=31_536_000.0, description="seconds a collective may wait before the job fails (at most a year)")


class CheckpointConfig(Section):
    """Sharded checkpoints (DCP) in RUN_DIR/checkpoints; they make resume and restarts possible."""

    every: int = Field(0, ge=0, description="save every N optimizer steps (0 = only at the end, if enabled)")
    at_end: bool = Field(True, description="save a checkpoint after the last step")
    keep: int = Field(2, ge=1, description="keep the newest N complete checkpoints")
    async_save: bool = Field(False, description="write checkpoints in a background thread while training goes on")
    max_restarts: int = Field(0, ge=0, description="restart failed workers up to N times; they resume from the newest checkpoint")


class HealthConfig(Section):
    """Heartbeats, straggler reports and named hangs (see src/shoal/distributed/health.py)."""

    heartbeat_s: float = Field(1.0, ge=0.0, le=86400.0, description="seconds between a rank's heartbeats in the c10d store (0 = off)")
    straggler_threshold: float = Field(1.5, gt=1.0, description="a rank busy longer than this x the other ranks' median per step is slow")
    straggler_windows: int = Field(3, ge=1, description="log windows in a row a rank must be slow before it is named a straggler")
    straggler_min_s: float = Field(0.01, ge=0.0, le=1e6, description="and busy at least this many seconds per step longer than that median: "
                                   "millisecond steps jitter by more than any threshold")


class LogConfig(Section):
    """What every training record carries besides loss and throughput."""

    monitors: list[str] = Field(["memory", "system", "mfu"], description="signals added to each training record (memory: parameter/optimizer "
                                "state and peak RSS per rank; system: CPU, memory, network bytes and step time per rank; mfu: model FLOPs "
                                "utilization against the measured matmul peak)")
    tensorboard: bool = Field(False, description="also write the records' numbers as TensorBoard scalars in RUN_DIR/tensorboard")


class ParallelConfig(Section):
    """How the model and each batch are split over the processes: dp x fsdp x tp x pp = world size."""

    dp: int = Field(0, ge=0, description="replicas that each see a different part of the batch (0 = the processes the other dims leave)")
    fsdp: int = Field(1, ge=1, description="shard parameters, gradients and optimizer state over this many processes (ZeRO-3)")
    tp: int = Field(1, ge=1, description="tensor parallel: split each layer's matrices over this many processes")
    pp: int = Field(1, ge=1, description="pipeline parallel: split the layers into this many stages")
    pp_schedule: Literal["gpipe", "1f1b", "interleaved"] = Field("1f1b", description="pipeline schedule")
    microbatches: int = Field(0, ge=0, description="pipeline micro-batches per step and replica (0 = 2 x pp)")
    stages_per_rank: int = Field(2, ge=1, description="interleaved: model chunks each pipeline rank holds")
    pp_split: list[str] = Field([], description="module names that begin a new stage (empty = balanced automatically)")
    pp_balance: Literal["cost", "time", "layers"] = Field(
        "cost", description="automatic split by estimated FLOPs+parameters, measured time, or equal layer count")
    pp_speeds: list[Positive] = Field([], description="relative speed of each pipeline rank (empty = equal; with pp_measure_speed, measured)")
    pp_measure_speed: bool = Field(False, description="measure each pipeline rank's matmul speed and give faster ranks more layers")
    tp_plan: dict[str, Literal["colwise", "rowwise", "sequence"]] = Field(
        {}, description="module path -> style (empty = the model's own plan, or colwise/rowwise pairs of its Linear layers)")
    sequence_parallel: bool = Field(True, description="tp: shard norms and residuals over the sequence (gpt)")
    activation_checkpointing: bool = Field(False, description="recompute each layer's activations in backward instead of keeping them")
    meta_init: bool = Field(False, description="build the model on the meta device and materialize only this process's shards")
    parallelize: str = Field("", description="a hook 'package.module:function' called as f(model, mesh, config) instead of the built-in strategies")
    batch_shares: list[float] = Field(
        [], description="relative share of every global batch for each data-parallel rank (dp x fsdp of them), e.g. [3, 1] "
        "(empty = equal; with balance = 'speed', the starting shares)")
    balance: Literal["none", "speed"] = Field(
        "none", description="speed: measure each data-parallel rank's samples per busy second and give faster ranks more of each batch")
    balance_threshold: float = Field(0.05, ge=0.0, lt=1.0, description="balance = 'speed': re-balance only when more than this fraction of a batch would move")

    @field_validator("batch_shares")
    @classmethod
    def _shares_are_positive(cls, shares: list[float]) -> list[float]:
        if any(not 0 < s < float("inf") for s in shares):
            raise ValueError("every share must be a positive number (a rank that should get nothing has no place in the job)")
        return shares


class JobConfig(Section):
    """A whole job. Every field has a default, so an empty file is a valid (tiny) job."""

    name: str = Field("job", description="a label for the run")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds model init, data order and partitioning (0 .. 2**32 - 1)")
    nproc: int = Field(1, ge=1, le=1024, description="worker processes on this machine")
    sync: str = Field("allreduce", description="how replicas agree on an update: allreduce (DDP, FSDP, TP, PP), param_server, "
                      "average (local SGD, DiLoCo), federated (FedAvg, FedProx), or one a plugin registers")
    plugins: list[str] = Field([], description="modules imported in every process first: your sync strategies, compressors, monitors register there")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    comm: CommConfig = CommConfig()
    ps: PSConfig = PSConfig()
    average: AverageConfig = AverageConfig()
    federated: FederatedConfig = FederatedConfig()
    dist: DistConfig = DistConfig()
    health: HealthConfig = HealthConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _data_source_has_path(self) -> JobConfig:
        if self.data.name in ("npz", "parquet") and not self.data.path:
            raise ValueError(f"data.path is required when data.name = '{self.data.name}'")
        return self

    @model_validator(mode="after")
    def _data_read_fits(self) -> JobConfig:
        d, read = self.data, self.data.read
        if read in ("rank", "stream") and d.name != "parquet":
            raise ValueError(f"data.read = '{read}' reads Parquet files; data.name = '{d.name}' is loaded whole: use data.read = 'auto'")
        if read == "stream" and d.partition_scope != "batch":
            raise ValueError("data.read = 'stream' needs data.partition_scope = 'batch': a fixed shard per rank is shuffled over "
                             "the whole run, which a stream read in order cannot serve")
        if read == "stream" and self.sync == "federated":
            raise ValueError("data.read = 'stream' cannot feed sync = 'federated': clients own shards drawn from the whole data "
                             "set; use data.read = 'rank' or 'all'")
        if read == "rank" and self.parallel.balance == "speed":
            raise ValueError("data.read = 'rank' needs each rank's samples known in advance, which parallel.balance = 'speed' "
                             "moves as it measures; use data.read = 'all' or 'stream', or fixed parallel.batch_shares")
        if d.lanes and (self.data_read() not in ("rank", "stream") or d.partition_scope != "batch" or self.sync == "federated"
                        or self.parallel.batch_shares or self.parallel.balance != "none"):
            raise ValueError("data.lanes needs Parquet read per rank or streamed (data.read = 'rank' or 'stream'), "
                             "data.partition_scope = 'batch', no parallel.batch_shares or balance and no sync = 'federated': "
                             "each rank serves whole lanes; set data.lanes = 0")
        if read == "rank" and self.sync == "federated" and self.federated.split != "iid":
            raise ValueError(f"data.read = 'rank' cannot split clients by label (federated.split = '{self.federated.split}' "
                             "reads every label first); use data.read = 'all'")
        return self

    def data_read(self) -> str:
        """What data.read = 'auto' means for this job: rank-local Parquet rows where the plan is known in advance."""
        d = self.data
        if d.read != "auto":
            return d.read
        fixed_plan = self.parallel.balance != "speed" and not (self.sync == "federated" and self.federated.split != "iid")
        return "rank" if d.name == "parquet" and fixed_plan else "all"


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "job"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}': remove it or check its spelling (`shoal config` lists every key)"
    msg = first["msg"].removeprefix("Value error, ")
    given = first.get("input")
    shown = f" (got {given!r})" if not isinstance(given, dict) and given is not None else ""
    return f"{where}: {msg}{shown}"


def validate(raw: dict[str, Any]) -> JobConfig:
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ShoalError(f"invalid job config: {_describe(err)}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ShoalError(f"job file '{path}' not found: give the path of a .toml job file")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ShoalError(f"job file '{path}' is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ShoalError(f"job file '{path}' is not a UTF-8 text file") from None


def _parse_value(text: str) -> Any:
    """Read `--set` values as TOML literals (3, 0.1, true, [1, 2], "x"); anything else stays a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def deep_merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win key by key, sections merged rather than replaced (a base job plus variations)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = deep_merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides to the raw dict; validation afterwards checks types."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ShoalError(f"--set '{item}': write it as section.key=value, e.g. --set train.epochs=3")
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            child = node.setdefault(section, {})
            if not isinstance(child, dict):
                raise ShoalError(f"--set '{item}': '{section}' is a value, not a section")
            node[section] = child = dict(child)
            node = child
        node[leaf] = _parse_value(value.strip())
    return raw


def load_job(path: str | Path | None, overrides: list[str] = ()) -> JobConfig:
    raw = load_toml(path) if path is not None else {}
    return validate(apply_overrides(raw, list(overrides)))


def to_toml(cfg: JobConfig) -> str:
    """The fully resolved config, written into every run directory."""
    data = cfg.model_dump(mode="json")
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"  # quoted: keys may hold dots
    raise TypeError(f"cannot write {type(v).__name__} to TOML")

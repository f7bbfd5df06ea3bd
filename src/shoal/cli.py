"""The `shoal` command. Thin: parse, call the library, turn ShoalError into one line and exit code 2."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # recent typer vendors click; older ones use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from shoal.errors import ShoalError

# rich_markup_mode=None: click's plain help, where a flag reads `--overwrite` (typer's boxes print `--overwrite <bool>`)
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Shoal: take a PyTorch training job beyond one process, with exact numerics and honest numbers.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        import torch

        typer.echo(f"shoal {version('shoal')} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="print Shoal's and torch's versions and exit", callback=_print_version,
                                          is_eager=True)] = False,
) -> None:
    """Shoal: take a PyTorch training job beyond one process, with exact numerics and honest numbers."""


@app.command()
def train(
    job: Annotated[Path, typer.Argument(help="job file (TOML); see `shoal config` for every key")],
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="worker processes on this machine (overrides the job's nproc)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="run directory (default runs/NAME-TIMESTAMP)")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a key: --set train.epochs=3 (repeatable)")] = [],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="allow writing into a run directory that has files")] = False,
    nnodes: Annotated[Optional[str], typer.Option("--nnodes", help="machines in the job: N, or MIN:MAX to go on when some leave (elastic)")] = None,
    node_rank: Annotated[Optional[int], typer.Option("--node-rank", help="this machine's number: 0 hosts the rendezvous, then 1, 2, ...")] = None,
    rdzv: Annotated[Optional[str], typer.Option("--rdzv", help="HOST:PORT where every machine reaches node rank 0's rendezvous")] = None,
    max_restarts: Annotated[int, typer.Option(
        "--max-restarts", help="restart the workers this many times after one fails (default: checkpoint.max_restarts)")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its newest complete checkpoint (any world size or layout)")] = False,
) -> None:
    """Train a job: spawns the workers here (one machine or one node of many), or runs as one worker under torchrun."""
    _warm_workers(job, nproc, set_, nnodes, max_restarts)
    from shoal.job.command import train_command
    from shoal.launch.nodes import node_spec

    train_command(job, nproc, out, list(set_), overwrite, node_spec(nnodes, node_rank, rdzv), max_restarts, resume)


def _warm_workers(job: Path, nproc: int | None, overrides: list[str], nnodes: str | None, max_restarts: int) -> None:
    """Start the workers' fork server before the heavy imports and checks, so its own imports overlap them. A guess
    from the job file: a wrong one costs some start-up time, nothing else (the launch starts the server anyway)."""
    import os
    import tomllib

    if "RANK" in os.environ:  # under torchrun this process is a worker
        return
    count = nproc
    for item in overrides:
        if item.replace(" ", "").startswith("nproc="):
            count = int(item.split("=", 1)[1]) if item.split("=", 1)[1].strip().isdigit() else count
    if count is None:
        try:
            count = tomllib.loads(job.read_text()).get("nproc", 1)
        except (OSError, ValueError):
            return  # the real check reports the file
    if (isinstance(count, int) and count > 1) or nnodes or max_restarts:
        from shoal.launch.forkserver import warm

        warm(["shoal.job.worker", "torchmetrics"])


@app.command()
def prep(
    pipeline: Annotated[Optional[Path], typer.Argument(help="pipeline file (TOML): sources and steps")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="output directory (Parquet shards + manifest.json)")] = None,
    cluster: Annotated[Optional[str], typer.Option("--cluster", help="Dask scheduler address, e.g. tcp://HOST:8786 (default: local)")] = None,
    apply: Annotated[Optional[Path], typer.Option("--apply", help="reapply the fitted parameters saved in this prep output")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output directory")] = False,
) -> None:
    """Preprocess data on Dask: statistics, integration, cleaning, reduction, transformation."""
    from shoal.prep import run_prep

    result = run_prep(pipeline, out, cluster=cluster, apply_dir=apply, overwrite=overwrite)
    for line in result.summary_lines():
        typer.echo(line)


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="a checkpoint directory (RUN/checkpoints/step-N) or a run directory (its newest)")],
    out: Annotated[Path, typer.Option("--out", help="where to write the plain state_dict (model.pt)")],
) -> None:
    """Write a checkpoint's model weights as a plain state_dict that torch.load(weights_only=True) reads."""
    from shoal.export import export_checkpoint

    typer.echo(f"wrote {export_checkpoint(checkpoint, out)}")


@app.command()
def deploy(
    target: Annotated[str, typer.Argument(help="k8s (Kubeflow PyTorchJob + ConfigMap) or slurm (sbatch script); or serve (then k8s RUN_DIR)")],
    job: Annotated[Path, typer.Argument(help="job file (TOML); after serve: k8s")],
    run: Annotated[Optional[Path], typer.Argument(help="serve: the run directory to serve")] = None,
    nnodes: Annotated[str, typer.Option("--nnodes", help="machines: N, or MIN:MAX for an elastic job")] = "2",
    nproc_per_node: Annotated[Optional[int], typer.Option("--nproc-per-node", help="processes per machine (default: the job's nproc)")] = None,
    image: Annotated[str, typer.Option("--image", help="k8s: container image with shoal installed")] = "shoal:latest",
    max_restarts: Annotated[int, typer.Option("--max-restarts", help="restarts after a failure before the job fails")] = 3,
    out: Annotated[Optional[Path], typer.Option("--out", help="file to write (default NAME.yaml / NAME.sbatch)")] = None,
    pods: Annotated[int, typer.Option("--pods", help="serve: pods in the Deployment")] = 1,
    replicas: Annotated[int, typer.Option("--replicas", help="serve: model replicas per pod")] = 1,
    port: Annotated[int, typer.Option("--port", help="serve: container port")] = 8000,
    claim: Annotated[str, typer.Option("--claim", help="serve: PersistentVolumeClaim holding the run directory")] = "shoal-runs",
    token_secret: Annotated[Optional[str], typer.Option("--token-secret", help="serve: Secret whose key 'token' clients must send")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a key, as in `shoal train` (repeatable): checked here, passed on")] = [],
) -> None:
    """Write the files that run a job on a cluster under torchrun: Kubernetes (Kubeflow) or SLURM; `serve k8s RUN`: a service."""
    if target == "serve":
        from shoal.serve.deploy import deploy_serve

        typer.echo(f"wrote {deploy_serve(str(job), run, image, pods, replicas, port, claim, token_secret, 32, 5.0, out)}")
        return
    from shoal.config import load_job
    from shoal.job.deploy import deploy as render

    typer.echo(f"wrote {render(target, job, load_job(job, list(set_)), nnodes, nproc_per_node, image, max_restarts, out, tuple(set_))}")


@app.command()
def infer(
    source: Annotated[Path, typer.Argument(help="a run directory (model.pt, else its newest checkpoint) or RUN/checkpoints/step-N")],
    out: Annotated[Path, typer.Option("--out", help="output directory: shards, manifest.json, metrics.json")],
    data: Annotated[Optional[Path], typer.Option("--data", help="inputs: .npz (x, optional y), Parquet file or `shoal prep` output")] = None,
    nproc: Annotated[int, typer.Option("--nproc", help="processes (replicas, or parts of a split model)")] = 1,
    split: Annotated[Optional[str], typer.Option("--split", help="split the model instead of replicating it: pp or tp")] = None,
    batch: Annotated[int, typer.Option("--batch", help="samples per forward pass")] = 64,
    generate: Annotated[bool, typer.Option("--generate", help="gpt: generate text from --prompt instead of reading --data")] = False,
    prompt: Annotated[str, typer.Option("--prompt", help="--generate: the text to continue")] = "\n",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="--generate: tokens to add")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="--generate: 0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="--generate: sample among the k likeliest (0 = all)")] = 0,
    samples: Annotated[int, typer.Option("--samples", help="--generate: continuations (sample i uses seed + i)")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="--generate: random seed")] = 0,
    no_cache: Annotated[bool, typer.Option("--no-kv-cache", help="--generate: recompute the whole sequence every step")] = False,
    prepack: Annotated[str, typer.Option("--prepack", help="replicated, on CPU: pack nn.Linear weights once for oneDNN: auto (when "
                                         "timed faster at --batch), on (whenever it checks out), off (as trained)")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output directory")] = False,
) -> None:
    """Run a trained model over many inputs (replicated or split over processes), or generate text with the gpt."""
    from shoal.infer.cli import infer_main

    infer_main(source, out, data, nproc, split, batch, overwrite, generate, prompt, max_new_tokens, temperature, top_k,
               samples, seed, not no_cache, prepack)


@app.command()
def serve(
    source: Annotated[Path, typer.Argument(help="a run directory (model.pt, else its newest checkpoint) or RUN/checkpoints/step-N")],
    replicas: Annotated[int, typer.Option("--replicas", help="model replicas, each in its own process")] = 1,
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    host: Annotated[str, typer.Option("--host", help="address to bind (0.0.0.0: every interface)")] = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option("--token", help="require 'Authorization: Bearer T' (default: $SHOAL_SERVE_TOKEN)")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="samples per replica batch (1: no batching)")] = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="longest a free replica's batch waits for requests still arriving "
                                               "or clients just answered that are due back (a lone one goes at once)")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", help="requests waiting at most; more get 503 + Retry-After")] = 256,
    max_request_samples: Annotated[int, typer.Option("--max-request-samples", help="samples in one request at most (413 beyond)")] = 256,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="request body size limit (413 beyond)")] = 8 << 20,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads per replica (0: cores / replicas)")] = 0,
    prepack: Annotated[str, typer.Option("--prepack", help="CPU: pack nn.Linear weights once for oneDNN (faster small batches of wide "
                                         "layers): auto (when timed faster at start), on (whenever it checks out), off (as trained)")] = "auto",
) -> None:
    """Serve a trained model over HTTP: /v1/predict, /v1/generate (gpt), /healthz, /readyz, /metrics."""
    from shoal.serve import serve_command

    serve_command(str(source), replicas, port, host, token, max_batch, max_wait_ms, max_queue, max_request_samples, max_body_bytes,
                  threads=threads, prepack=prepack)


@app.command("config")
def show_config(
    markdown: Annotated[bool, typer.Option("--markdown", help="a Markdown table (docs/config.md); the default when not printing to a terminal")] = False,
) -> None:
    """Print every job-file key with its default and meaning."""
    from shoal.config_doc import render_markdown, render_text

    typer.echo(render_markdown() if markdown or not sys.stdout.isatty() else render_text())


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="one or more run directories (several: side by side)")],
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default RUN/report.html for one run, ./report.html for several)")] = None,
) -> None:
    """Write one self-contained HTML report (plots inline, no network needed) of one or more runs."""
    from shoal.report import write_report

    typer.echo(f"wrote {write_report(list(run_dirs), out)}")


@app.command()
def plan(
    job: Annotated[Optional[Path], typer.Argument(help="job file (TOML) whose model, batch and sequence are planned")] = None,
    cluster: Annotated[str, typer.Option("--cluster", help="preset DEVICE[:NETWORK] (a100, h100, h200, mi300x, cpu; nvlink, ib, roce, "
                                         "ethernet) or a profile file from `shoal calibrate`")] = "h100:ib",
    nodes: Annotated[int, typer.Option("--nodes", help="machines")] = 1,
    devices_per_node: Annotated[int, typer.Option("--devices-per-node", help="accelerators (or processes) per machine")] = 8,
    set_: Annotated[list[str], typer.Option("--set", help="override a job key, e.g. --set model.layers=8 --set train.global_batch_size=64")] = [],
    model: Annotated[str, typer.Option("--model", help="the shape directly: layers=96,dim=12288,heads=96,seq=2048,vocab=51200,batch=1536 "
                                       "(also ffn, kv_heads, gated, tied); over the job's when both are given")] = "",
    top: Annotated[int, typer.Option("--top", help="layouts to show")] = 10,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write every layout's prediction to this JSON file")] = None,
) -> None:
    """Predict step time and memory of every layout (dp, fsdp, tp, pp, micro-batches, recompute) and recommend one."""
    from shoal.plan import plan_command

    for line in plan_command(job, list(set_), model, cluster, nodes, devices_per_node, top, json_out):
        typer.echo(line)


@app.command()
def calibrate(
    out: Annotated[Path, typer.Option("--out", help="profile file to write (TOML), for `shoal plan --cluster FILE`")] = Path("cluster.toml"),
    nproc: Annotated[int, typer.Option("--nproc", help="processes for the collective measurements")] = 2,
    seconds: Annotated[float, typer.Option("--seconds", help="time spent on each measurement")] = 0.3,
    job: Annotated[Optional[Path], typer.Option("--job", help="also measure the share of peak this job's model reaches in one step")] = None,
    nnodes: Annotated[int, typer.Option("--nnodes", help="machines whose links to measure: run the same command on each")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", help="this machine's number: 0 hosts the rendezvous and writes the profile")] = 0,
    rdzv: Annotated[str, typer.Option("--rdzv", help="HOST:PORT where every machine reaches node rank 0")] = "",
) -> None:
    """Measure this machine (matmul FLOP/s per dtype, collective bandwidth and latency, memory) into a profile file;
    with --nnodes, also the links between the machines (latency and bandwidth of every pair)."""
    from shoal.plan.calibrate import calibrate as measure

    written = measure(out, nproc, seconds, job, nnodes, node_rank, rdzv)
    typer.echo(f"wrote {written}" if written else f"node {node_rank}: links measured; node rank 0 writes the profile")


@app.command()
def bench(
    job: Annotated[Path, typer.Argument(help="job file (TOML)")],
    nproc: Annotated[str, typer.Option("--nproc", help="process counts, comma-separated")] = "1,2",
    out: Annotated[Path, typer.Option("--out", help="directory for the runs, the table (bench.md) and the report")] = Path("runs/bench"),
    set_: Annotated[list[str], typer.Option("--set", help="override a key in every run (repeatable)")] = [],
    target: Annotated[Optional[float], typer.Option("--target", help="evaluation accuracy whose time-to-reach is reported")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace runs already in --out")] = False,
    strategies: Annotated[list[str], typer.Option("--strategies", help="strategies to compare, each at every count: names "
                                                  "separated by commas (a sync strategy, a compression or fsdp/tp/pp), or one "
                                                  "bundle LABEL:key=value;key=value ({nproc} = the run's count); repeatable")] = [],
) -> None:
    """Scaling study: the job at each process count (and strategy); speed-up, scaling efficiency, time to a target accuracy, and a report."""
    from shoal.job.bench import bench_command

    for line in bench_command(job, _counts(nproc), out, list(set_), target, overwrite, list(strategies)):
        typer.echo(line)


def _counts(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise ShoalError(f"bench --nproc '{text}': give process counts separated by commas, such as 1,2,4") from None


def main(argv: list[str] | None = None) -> None:
    """Every user error ends as one line on stderr and exit code 2; bugs keep their traceback. Called without `argv`
    (the `shoal` command, `python -m shoal`) it ends the whole process."""
    try:
        code = app(args=argv, standalone_mode=False)
    except ShoalError as err:
        code = _said(str(err), err.exit_code)  # 2; an interrupted run 130 (SIGINT) or 143 (SIGTERM)
    except click_errors.NoArgsIsHelpError as err:
        print(err.ctx.get_help() if err.ctx else "see shoal --help")
        code = 0
    except click_errors.UsageError as err:
        where = f"shoal {err.ctx.info_name} --help" if err.ctx and err.ctx.parent else "shoal --help"
        code = _said(f"{err.format_message()} (see {where})")
    except getattr(click_errors, "Abort", ()):  # vendored click in recent typer has no Abort; `except ()` matches nothing
        code = _said("interrupted", 130)  # click turns Ctrl-C into Abort (`shoal train` itself says where its run got to)
    except KeyboardInterrupt:
        code = _said("interrupted", 130)
    except SystemExit as done:  # a command's own last line (`raise SystemExit("error: ...")`) or code
        if argv is not None:
            raise  # called in-process: the caller sees what the command raised
        code = done.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    _leave(code if isinstance(code, int) else 0, whole_process=argv is None)


def _said(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _leave(code: int, whole_process: bool) -> None:
    """Exit with `code`. The whole process skips the interpreter's teardown, which frees torch's objects one by one
    (0.5-2 s, the longer the busier the machine) after everything is done: what Shoal writes is closed, committed or
    line-buffered by then, and atexit handlers (log flushing, multiprocessing's clean-up) still run first."""
    if not whole_process:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

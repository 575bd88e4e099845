"""The ``mnist-serving`` command line: train, export, build, compare, serve, loadtest.

    mnist-serving --help
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from models.config import TrainConfig
from models.contract import parse_frameworks

app = typer.Typer(
    help="Train one MNIST CNN in TensorFlow, Keras and PyTorch, export to ONNX, serve, load-test.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FrameworksOption = Annotated[
    str, typer.Option("--frameworks", "-f", help="'all' or a comma list of tensorflow,keras,pytorch")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder of the four MNIST IDX files (.gz or raw). Default: $MNIST_DATA_DIR, "
        "then the user cache, then a download into it.",
    ),
]
ArtifactsOption = Annotated[
    Path, typer.Option("--out", "--artifacts", help="Folder of the trained and exported models.")
]


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@contextmanager
def user_errors():
    """Turn a PipelineError into a one-line message and exit code 2: no traceback for the user."""
    from models.errors import PipelineError
    from services.settings import SettingsError

    try:
        yield
    except (PipelineError, SettingsError) as error:
        raise fail(str(error)) from error


def frameworks_or_fail(text: str) -> list[str]:
    try:
        return parse_frameworks(text)
    except ValueError as error:
        raise fail(str(error)) from error


def echo_training(data, rows: list[dict]) -> None:
    from models.training import training_table

    typer.echo(f"\nTrained on {data.describe_training_set()}; tested on {len(data.test_labels)} images.")
    typer.echo(training_table(rows))


def echo_export(data, rows: list[dict]) -> None:
    from export.pipeline import export_table

    typer.echo(f"\nParity on {len(data.test_labels)} test images (ONNX Runtime, CPU provider).")
    typer.echo(export_table(rows))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        for noisy in ("tf2onnx", "onnx_ir", "onnxscript", "absl", "tensorflow", "bentoml"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def train(
    frameworks: FrameworksOption = "all",
    data_dir: DataDirOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training set.")] = 15,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seeds data order, weights and dropout.")] = 0,
    dry_run: Annotated[bool, typer.Option(help="One batch per epoch: a smoke test.")] = False,
    out: ArtifactsOption = Path("artifacts"),
) -> None:
    """Train the shared CNN in each framework; write the native model and metrics.json."""
    from models.data import load_mnist
    from models.training import train_framework

    selected = frameworks_or_fail(frameworks)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        dry_run=dry_run,
    )
    with user_errors():
        data = load_mnist(data_dir)
        rows = [train_framework(framework, config, data, out) for framework in selected]
    echo_training(data, rows)


@app.command("export")
def export_command(
    frameworks: FrameworksOption = "all",
    artifacts: ArtifactsOption = Path("artifacts"),
    data_dir: DataDirOption = None,
    register: Annotated[bool, typer.Option(help="Register in the BentoML model store.")] = True,
) -> None:
    """Export trained models to ONNX, prove parity on the test set, register them in BentoML."""
    from export.pipeline import export_framework
    from models.data import load_mnist

    selected = frameworks_or_fail(frameworks)
    with user_errors():
        data = load_mnist(data_dir)
        rows = [export_framework(fw, artifacts, data, register=register) for fw in selected]
    echo_export(data, rows)


@app.command()
def build(
    frameworks: FrameworksOption = "all",
    data_dir: DataDirOption = None,
    artifacts: ArtifactsOption = Path("artifacts"),
    epochs: Annotated[int, typer.Option(min=1, help="Epochs when a model must be trained.")] = 15,
    retrain: Annotated[
        bool, typer.Option(help="Train and export again even where a model and its export exist.")
    ] = False,
) -> None:
    """Train and export where needed (parity checked, registered): the one step before serving."""
    from export.pipeline import current_export, export_framework
    from models.data import load_mnist
    from models.training import read_metrics, train_framework

    selected = frameworks_or_fail(frameworks)
    with user_errors():
        data = load_mnist(data_dir)
        config = TrainConfig(epochs=epochs)
        trained = []
        for framework in selected:
            existing = None if retrain else read_metrics(artifacts, framework)
            trained.append(existing or train_framework(framework, config, data, artifacts))
        exported = [
            (None if retrain else current_export(framework, artifacts))
            or export_framework(framework, artifacts, data)
            for framework in selected
        ]
    echo_training(data, trained)
    echo_export(data, exported)


@app.command()
def compare(
    frameworks: FrameworksOption = "all",
    data_dir: DataDirOption = None,
    artifacts: ArtifactsOption = Path("artifacts"),
    rounds: Annotated[int, typer.Option(min=1, help="Alternating timing rounds.")] = 6,
    report: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path(
        "reports/comparison.md"
    ),
) -> None:
    """Measure the frameworks side by side: accuracy, size, parity, native vs ONNX latency."""
    from export.compare import compare_framework, comparison_report
    from models.data import load_mnist

    selected = frameworks_or_fail(frameworks)
    with user_errors():
        data = load_mnist(data_dir)
        rows = [compare_framework(fw, artifacts, data, rounds=rounds) for fw in selected]
    text = comparison_report(rows, data, rounds=rounds)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    typer.echo(text)
    typer.echo(f"written to {report}")


HostOption = Annotated[str, typer.Option(help="Address to listen on.")]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]
DeviceOption = Annotated[
    str,
    typer.Option(
        envvar="MNIST_DEVICE", help="auto | cuda | cpu: auto falls back to the CPU with a warning."
    ),
]


@app.command()
def serve(
    host: HostOption = "127.0.0.1", port: PortOption = 3000, device: DeviceOption = "auto"
) -> None:
    """Serve the three registered models with `bentoml serve` (run `mnist-serving build` first)."""
    from services.runner import PreflightError, serve_command
    from services.runner import serve as run_service

    typer.echo(f"$ {' '.join(serve_command(host=host, port=port)[1:])}")
    try:
        run_service(host=host, port=port, device=device)  # becomes bentoml serve: no return
    except PreflightError as error:
        raise fail(f"{error}") from error


@app.command()
def up(
    data_dir: DataDirOption = None,
    artifacts: ArtifactsOption = Path("artifacts"),
    host: HostOption = "127.0.0.1",
    port: PortOption = 3000,
    device: DeviceOption = "auto",
) -> None:
    """The main job: build (train where needed, export, register), then serve."""
    build(frameworks="all", data_dir=data_dir, artifacts=artifacts, epochs=15, retrain=False)
    serve(host=host, port=port, device=device)


def comma_list(text: str | None, kind: type = str) -> list | None:
    """``"1,8,32"`` -> ``[1, 8, 32]``; None stays None (the profile's default)."""
    if text is None:
        return None
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise typer.BadParameter(f"{text!r} is not a comma list of {kind.__name__} values") from error


@app.command()
def loadtest(
    frameworks: FrameworksOption = "all",
    scenarios: Annotated[str, typer.Option(help="Comma list of closed, open, batch.")] = "closed,open,batch",
    host: Annotated[
        str | None, typer.Option(help="URL of a running service on loopback; default: start one.")
    ] = None,
    baseline_host: Annotated[str | None, typer.Option(help="URL of a running baseline server.")] = None,
    baseline: Annotated[bool, typer.Option(help="Run the Starlette baseline beside the service.")] = True,
    duration: Annotated[int | None, typer.Option(min=2, help="Seconds per Locust run.")] = None,
    warmup: Annotated[float | None, typer.Option(min=0, help="Seconds left out at each start.")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Repeats, in rotated order.")] = None,
    users: Annotated[str | None, typer.Option(help="Closed-loop users, e.g. 1,8,32,64.")] = None,
    rates: Annotated[str | None, typer.Option(help="Open-loop rates in requests/s, climbed.")] = None,
    p99_bound_ms: Annotated[float | None, typer.Option(help="Open-loop p99 bound.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch request.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Locust workers (distributed).")] = None,
    quick: Annotated[bool, typer.Option(help="The under-a-minute profile CI runs.")] = False,
    data_dir: DataDirOption = None,
    artifacts: ArtifactsOption = Path("artifacts"),
    out: Annotated[Path | None, typer.Option(help="Report folder; default reports/<timestamp>/.")] = None,
) -> None:
    """Compare the frameworks under load with Locust, beside a plain Starlette baseline."""
    from loadtests.runner import run_loadtest

    with user_errors():
        report = run_loadtest(
            host=host, baseline_host=baseline_host, frameworks=frameworks_or_fail(frameworks),
            scenarios=comma_list(scenarios), duration=duration, warmup=warmup, rounds=rounds,
            users=comma_list(users, int), rates=comma_list(rates, float), p99_bound_ms=p99_bound_ms,
            batch_size=batch_size, workers=workers, baseline=baseline, quick=quick,
            data_dir=data_dir, artifacts=artifacts, out=out,
        )
    typer.echo(report.read_text())
    typer.echo(f"written to {report}")

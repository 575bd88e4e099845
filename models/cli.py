"""The ``mnist-serving`` command line: train, export, build, compare, serve, loadtest.

    mnist-serving --help
"""

from __future__ import annotations

import logging
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


def frameworks_or_fail(text: str) -> list[str]:
    try:
        return parse_frameworks(text)
    except ValueError as error:
        raise fail(str(error)) from error


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
    from models.data import MnistDataError, load_mnist
    from models.training import MissingDependencyError, train_framework, training_table

    selected = frameworks_or_fail(frameworks)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        dry_run=dry_run,
    )
    try:
        data = load_mnist(data_dir)
        rows = [train_framework(framework, config, data, out) for framework in selected]
    except (MnistDataError, MissingDependencyError) as error:
        raise fail(str(error)) from error
    typer.echo(f"\nTrained on {data.describe_training_set()}; tested on {len(data.test_labels)} images.")
    typer.echo(training_table(rows))

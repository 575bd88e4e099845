"""``python -m models`` runs the mnist-serving command line."""

from models.cli import app

app(prog_name="mnist-serving")

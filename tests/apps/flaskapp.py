"""A Flask app for the ``geventfork serve`` tests (skipped without Flask)."""

import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return f"{os.getpid()} flask"

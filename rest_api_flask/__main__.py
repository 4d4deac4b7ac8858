"""``python -m rest_api_flask ...``: the same as ``python rest_api_flask/flask_app.py ...``."""

import sys

from maskrcnn_finetune.cli import run_cli
from rest_api_flask.flask_app import main

sys.exit(run_cli(main))

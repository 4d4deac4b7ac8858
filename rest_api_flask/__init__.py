"""The REST API and web page that serve a trained model folder (served by ``flask_app.py``)."""

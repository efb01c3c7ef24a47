"""The Functions app's code: `function_app.py` binds each trigger to `shared.functions`."""

import os

# The app uses no pydantic plugins. Looking for them reads the metadata of every installed package when the
# first model is built (about 25 ms of a cold start on the benchmark machine); pydantic's own switch turns the
# search off, and an app setting of that name still wins. It is set here, not in config.py, because it must
# be in place before any module of the package builds a model.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

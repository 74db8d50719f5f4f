pytest_plugins = ["evcore.pytest_plugin"]

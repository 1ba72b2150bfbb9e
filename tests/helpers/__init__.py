"""What several test modules share: tiny models, data, runs and processes (fixtures live in conftest.py)."""

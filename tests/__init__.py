"""The test suite: tests/<floor>/test_<module>.py tests src/deepmim/<floor>/<module>.py."""

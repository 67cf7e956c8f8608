"""The tiny token shards of tests/components/test_pretrain.py, shared with these tests."""

from tests.components.test_pretrain import shards  # noqa: F401 (a fixture)

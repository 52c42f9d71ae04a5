"""swift_plugins.config.schema: every key has help, one target, a default among its choices."""
import dataclasses

from swift_plugins import config as C
from swift_plugins.config.schema import CONFIG, OURS, SWIFT
from swift_plugins.data import ConversationOptions


def test_every_conversation_option_is_a_custom_key():
    runtime = {f.name for f in dataclasses.fields(C.RuntimeOptions)}
    by_option = {"seed": "conversation_seed"}
    for f in dataclasses.fields(ConversationOptions):
        assert by_option.get(f.name, f.name) in runtime, f.name
    custom = {leaf.meta["name"]: leaf for leaf in C.SCHEMA_LEAVES if leaf.path[0] == "custom"}
    assert custom["object_ordering"].meta["choices"] == ConversationOptions.__dataclass_fields__[
        "object_ordering"].metadata["choices"]


def test_schema_metadata_is_complete():
    names = set()
    for leaf in C.SCHEMA_LEAVES:
        assert leaf.meta["help"], leaf.dotted
        assert leaf.meta["target"] in (SWIFT, OURS, CONFIG)
        key = (leaf.meta["target"], leaf.meta["name"])
        assert key not in names, leaf.dotted
        names.add(key)
        if leaf.meta["choices"] is not None and not leaf.meta["required"]:
            assert leaf.default is None or leaf.default in leaf.meta["choices"], leaf.dotted

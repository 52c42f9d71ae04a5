"""swift_plugins.config.render: --print_config is loadable YAML with each value's source."""
import yaml

from swift_plugins import config as C


def test_render_config_shows_sources_and_loads_back(cfg):
    path = cfg("x.yaml", "extends: base.yaml\ntraining:\n  learning_rate: 2.0e-4\n")
    r = C.resolve_config(path, [("training.seed", ["7"])], world_size=2, world_size_source="--world_size")
    text = C.render_config(r)
    lines = text.splitlines()
    assert lines[0] == "# resolved from: x.yaml <- base.yaml"
    assert "  learning_rate: 0.0002  # x.yaml" in lines
    assert "  effective_batch_size: 8  # base.yaml" in lines
    assert "  seed: 7  # command line" in lines
    assert "  weight_decay: 0.1  # default" in lines
    assert lines[-2:] == ["# derived (world_size 2 from --world_size):",
                          "#   gradient_accumulation_steps: 4  (derived: 8 / (1 x 2))"]
    reloaded = yaml.safe_load(text)
    assert reloaded["training"]["learning_rate"] == 2e-4 and reloaded["custom"]["coord_tokens"]["enabled"] is False
    with open("roundtrip.yaml", "w") as f:
        f.write(text)
    again = C.resolve_config("roundtrip.yaml", world_size=2)
    assert again.config == r.config

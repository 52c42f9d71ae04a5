"""swift_plugins.data.image_size: the pure smart_resize equals qwen-vl-utils' on a grid of sizes."""
import pytest

from swift_plugins.data.image_size import smart_resize


def test_smart_resize_matches_qwen_vl_utils_rule():
    assert smart_resize(100, 200) == (96, 192)
    assert smart_resize(427, 640) == (416, 640)
    assert smart_resize(375, 500) == (384, 512)
    assert smart_resize(700, 1000) == (704, 992)
    assert smart_resize(960, 1280) == (768, 1024)        # above 786,432 px: scaled by sqrt, floored
    assert smart_resize(10, 10) == (64, 64)              # below 4,096 px: scaled up, ceiled
    assert smart_resize(48, 80) == (64, 64)              # round(1.5)=2, round(2.5)=2: Python rounds halves to even
    assert smart_resize(32, 6400) == (32, 6400)          # aspect ratio exactly 200 is allowed
    with pytest.raises(ValueError, match="absolute aspect ratio must be smaller than 200"):
        smart_resize(32, 6432)


def test_smart_resize_equals_qwen_vl_utils():
    from qwen_vl_utils import vision_process as vp  # imports torchvision (guarded on CPU by make install)
    sizes = [(h, w) for h in (1, 15, 16, 17, 31, 48, 100, 333, 427, 480, 500, 640, 1000, 1333, 4000)
             for w in (1, 16, 33, 48, 64, 375, 612, 640, 1024, 2000, 5000)
             if max(h, w) / min(h, w) <= 200]
    for h, w in sizes:
        for min_px, max_px in ((4096, 786432), (65536, 16777216), (3136, 12845056)):
            assert smart_resize(h, w, 32, min_px, max_px) == vp.smart_resize(h, w, 32, min_px, max_px), (h, w)

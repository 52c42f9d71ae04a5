"""swift_plugins.lengths.image_rule: image tokens from the image size, the training path's two resizes."""
import pytest

from swift_plugins.lengths import ImageTokenRule

QWEN3_VL = dict(patch_size=16, merge_size=2, min_pixels=4 * 32 * 32, max_pixels=16384 * 32 * 32)


@pytest.mark.parametrize("size,resized,tokens", [
    ((640, 480), (640, 480), 300),     # multiples of 32 already
    ((640, 427), (640, 416), 260),     # 427 rounds to 416
    ((500, 375), (512, 384), 192),
    ((100, 80), (96, 64), 6),          # 80/32 = 2.5 rounds half to even -> 64
    ((10, 10), (64, 64), 4),           # below min_pixels: scaled up with ceil to 4 tokens
    ((33, 2000), (32, 1984), 62),      # aspect ratio 60; 2000/32 = 62.5 rounds to even
])
def test_image_rule_matches_worked_examples(size, resized, tokens):
    rule = ImageTokenRule(**QWEN3_VL)
    assert rule.resized_size(*size) == resized
    assert rule.tokens(*size) == tokens


def test_template_max_pixels_rescales_first():
    rule = ImageTokenRule(**QWEN3_VL, template_max_pixels=786432)
    assert rule.resized_size(4000, 3000) == (1024, 768)
    assert rule.tokens(4000, 3000) == 768
    assert rule.tokens(640, 480) == 300          # under the limit: untouched


def test_aspect_ratio_over_200_is_refused():
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        ImageTokenRule(**QWEN3_VL).tokens(10, 2010)

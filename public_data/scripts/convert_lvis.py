"""LVIS v1 instances JSON + images -> JSONL + resized images; see swift_plugins/data/lvis_convert.py.

python public_data/scripts/convert_lvis.py --instances lvis_v1_train.json --image_dir coco \
    --out_dir public_data/lvis/rescale_32_768_poly_20 --split train --num_workers 8
"""
import sys

from swift_plugins.data.lvis_convert import main

if __name__ == "__main__":
    sys.exit(main())

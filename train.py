#!/usr/bin/env python
"""`python train.py [overrides]` — see conf/train.yaml. Example:
python train.py model=combined backbone=inception_v4 loss=hinge trainer=gpu data.image_size=224"""

from sketchembed.train.run import main

if __name__ == "__main__":
    main()

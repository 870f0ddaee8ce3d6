#!/usr/bin/env python
"""`python eval.py ckpt_path=PATH [data.test_dir=FOLDER]` — see conf/eval.yaml."""

from sketchembed.commands.evaluate import main

if __name__ == "__main__":
    main()

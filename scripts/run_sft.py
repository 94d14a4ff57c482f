"""Fine-tune with TRL's SFTTrainer from a recipe (TRL script shape; the logic is autoevol_train.train.sft).

    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml \
        scripts/run_sft.py --config recipes/mistral-7b/math/sft.yaml [--learning_rate 1e-5 ...]
"""

import sys

from autoevol_train.train.sft import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train and evaluate a model on a dataset: plugin models and every RecBole model alike.

Examples:
    python run.py                                   # OneVision on MVShop mini (generated on first use)
    python run.py --model=SASRec --dataset=Beauty   # after converting Beauty, see README
    python run.py --model=GRU4Rec --dataset=Beauty --epochs=5 --learning_rate=0.002
    python run.py --nproc=2                         # in 2 processes (gloo on CPUs, NCCL on GPUs; docs/onevision.md)
"""
from recbole_onevision.cli import main

if __name__ == "__main__":
    main()

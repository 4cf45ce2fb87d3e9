"""Evaluation on frozen networks: feature extraction, linear probe, k-NN, and IS/FID/KID.

Modules are imported one by one (``bifamily.evaluation.fid`` pulls in clean-fid, which takes seconds
to import, so nothing here imports it eagerly).
"""

"""worldstream.data.ingest: real camera trajectories -> MG3 clips (docs/ingest.md).

common.py (world alignment, scale, frames, Clip assembly, shard writing), realestate10k.py,
poses_npy.py, nerfstudio.py (one reader per format), cmd.py (`worldstream data ingest`).
"""

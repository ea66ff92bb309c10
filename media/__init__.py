"""Video files in and out: streaming PyAV decoding with frame selection and resizing
(:mod:`.decode`, :mod:`.resize`), and writers for mp4 / webm / gif / png sequences
(:mod:`.encode`).

Frames follow ComfyUI's IMAGE convention: ``[F, H, W, 3]`` float32 in 0..1 on the CPU.
Host-free: nothing here imports ComfyUI (the nodes in ``nodes/video.py`` adapt it).
"""

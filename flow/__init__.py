"""Optical flow: estimation (OpenCV DIS, torchvision RAFT), warping, occlusion masks, previews.

Conventions shared by every module here (and by the ``OPTICAL_FLOW`` type of the nodes, the
same layout as comfyui_controlnet_aux and ComfyUI-RAFT so the packs interoperate):

- a flow is a float32 tensor ``[B, H, W, 2]`` of pixel displacements ``(dx, dy)``; x grows to
  the right, y downwards, pixel centres at integer coordinates;
- a flow from *source* to *target* is defined on the source's grid: the content at pixel ``p``
  of the source is at ``p + flow[p]`` in the target;
- for a clip of F frames, the **forward** flow ``[F-1, H, W, 2]`` holds frame i → i+1 at index
  i (on frame i's grid), the **backward** flow holds frame i+1 → i at index i (on frame i+1's
  grid);
- masks are ``[B, H, W]`` float, 1 = occluded / unreliable, 0 = reliable.

Pure torch (plus OpenCV for DIS): nothing here imports ComfyUI.
"""

"""Everything that runs inside the UNet's attention and blocks: block addressing, patch
plumbing, extended (keyframe) attention, TokenFlow propagation, PnP injection, FLATTEN
trajectory attention, feature capture. Tensor code; ComfyUI objects are duck-typed."""

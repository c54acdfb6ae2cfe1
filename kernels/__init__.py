"""Triton kernels for the hot bound computations, each beside its PyTorch reference.

Modules (one kernel each, with ``*_triton`` launcher and ``*_reference`` PyTorch reference):

- :mod:`genbab.kernels.concretize`: ``min_{l <= x <= u} A x + b`` over input boxes, fused and
  batched over domains and spec rows;
- :mod:`genbab.kernels.elementwise_backward`: one backward step ``A -> (A+ s_l + A- s_u,
  sum A+ b_l + A- b_u)`` through an elementwise relaxation, fused;
- :mod:`genbab.kernels.relax`: the tangent / chord relaxation of S-shaped (Sigmoid, Tanh, Erf),
  periodic (Sin, Cos) and GeLU nodes for many domains at once (tangent-table lookup,
  optimizable tangent points, rigorous biases on the cut points).

Importing a kernel module imports Triton; launchers run on CUDA tensors, or on CPU tensors
when ``TRITON_INTERPRET=1`` was set before Triton was imported. Dispatch between these and the
PyTorch paths lives in :mod:`genbab.bounds.kernel_backend`.
"""

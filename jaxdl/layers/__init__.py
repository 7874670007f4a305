"""Building blocks shared by several model families."""

from jaxdl.layers.activations import activation, get_activation, sow_relu
from jaxdl.layers.conv import Conv, conv_general_dilated, conv_impl, matmul_2d
from jaxdl.layers.dense import Dense, DenseGeneral, dot_general
from jaxdl.layers.initializers import get_initializer
from jaxdl.layers.pool import max_pool

__all__ = ["activation", "get_activation", "sow_relu", "get_initializer", "Conv",
           "conv_general_dilated", "conv_impl", "matmul_2d", "Dense", "DenseGeneral",
           "dot_general", "max_pool"]

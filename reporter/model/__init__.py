"""From a checkpoint to an ONNX model with every gate exposed.

checkpoints     read a checkpoint safely (state_dict + factory, Lightning, TorchScript, ONNX)
inputs          what a model takes: read from its ONNX graph or its torch module
export          torch module → ONNX, with output parity measured against torch
expose          the graph pass: every LSTM/GRU/RNN node's gates become graph outputs
recurrent_spec  one recurrent node's attributes and inputs, read and checked
scan_rewrite    one recurrent node rewritten as an equivalent Scan that emits its gates
graph_builder   fresh names and node emission for graph rewrites
"""

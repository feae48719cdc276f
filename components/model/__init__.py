"""The model every stage shares, and no stage owns: the CNN + LSTM (`network`), its
SavedModel and serving signatures (`saved_model`), where its evidence lies
(`attribution`, Grad-CAM), its metrics (`metrics`: AUC and class weights; `intervals`:
metrics with bootstrap intervals) and the runtimes that run its artifacts (`runtimes`:
TensorFlow, LiteRT, onnxruntime).

train builds and fits it, evaluate and export measure it, push serves it, predict runs
it; none of them imports another's modules for it.
"""

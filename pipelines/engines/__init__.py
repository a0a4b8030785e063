"""Where batch work runs: ``local`` (threads in this process) or ``ray`` (a Ray cluster).

Both offer the same two streams, so a job picks its engine and is otherwise one path:
``encode_stream`` (image rows -> vectors, in bounded batches) and ``answer_stream`` (query
vectors -> top candidates from a FAISS index). ``ray_decode`` and ``ray_index`` hold the Ray
tasks for decoding images and training an IVF index; Ray is an optional extra. ``rerank``: a
second model re-scoring the index's top rows of each query (the local ``answer_stream``).
"""

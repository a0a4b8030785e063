"""Scores computed from vectors alone; nothing here reads images or runs a network.

=======================  ====================================================================
module                   what it is
=======================  ====================================================================
``episodes``             N-way k-shot episode sampling (seeded)
``prototypes``           nearest-prototype one-shot accuracy over episodes
``knn``                  KNN classification against any searcher (FAISS or exact)
``verification``         1:1 genuine/impostor pairs, ROC, EER and a threshold
``open_set``             1:K identification with an "unknown" answer
``metrics``              accuracy, confidence intervals, strict top-1, threshold sweeps
``clustering``           clustering of unseen classes one group at a time, known count or not
``kmeans``               FAISS KMeans: k-means++ seeding and restarts, spherical for cosine
``cluster_scores``       a clustering against true labels: matched accuracy, ARI, NMI
``cluster_thresholds``   calibration of the clustering thresholds and their defaults
``thresholds``           the one resolver: a given value, a model's carried value, or a default,
                         with one provenance sentence
``evaluate``             episodes, KNN, verification and clustering of stored embeddings
``baseline``             raw pixels, preprocessed by the store's recipe, as the baseline
``forgeries``            genuine-versus-forgery verification of ``writer/genuine|forged``
``validation``           the training loop's score: N-way one-shot accuracy on held-out images
=======================  ====================================================================
"""

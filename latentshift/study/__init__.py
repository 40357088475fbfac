"""The reader study: blinded ratings of two presentations of each prediction.

``create`` precomputes the cases (condition ``maps``: Grad-CAM and Integrated Gradients;
condition ``latent_shift``: the GIF with its prediction bar) into a study folder,
``schedule`` orders them per reader, ``store`` keeps readers, assignments and ratings in
SQLite, ``app`` serves the reading page and the ``/study_next`` and ``/study_rate``
endpoints, and ``analyze`` computes the paired statistics.
"""

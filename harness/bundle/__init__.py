"""Offline bundles: measure a target that the harness cannot reach (air-gapped board, GPU machine).

``laaq-bench bundle`` (:mod:`harness.bundle.build`) compiles each variant exactly as ``bench`` does,
crafts the adversarial examples on the host (:mod:`harness.bundle.craft`), and writes a folder the
device can run with TVM's runtime and numpy only (:mod:`harness.bundle.runner`, copied in as
``runner.py``); ``laaq-bench ingest`` (:mod:`harness.bundle.ingest`) checks the device's output
against its bundle and turns it into the usual run-folder rows. :mod:`harness.bundle.manifest` holds
the typed files both sides read.
"""

"""Data: video I/O, record schemas, shard builders (local, Beam, TFDS) and the grain training pipeline.

  video_io      PyAV decode (seeking) / encode
  schema        clip, image and latent records (the single definition of the stored format)
  clips         one video -> scene-cut, captioned clip records (shared by the local and Beam builders)
  build_shards  CLI: videos + captions -> ArrayRecord clip shards (multiprocessing)
  beam_pipeline the same builder on Apache Beam
  image_shards  CLI: images + captions -> image-record shards
  tfds_builder  the clip shards as a TFDS dataset (``tfds.data_source``)
  buckets       resolution/duration buckets
  decoders      per-record decode + augment
  pipeline      grain pipeline and the checkpointable ``DataIterator``
"""

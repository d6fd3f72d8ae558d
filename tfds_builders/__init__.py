"""TFDS dataset builders (array_record, read with tfds.data_source + grain; no TensorFlow)."""

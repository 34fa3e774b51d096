# Cython's declarations for records.py when compiled (streams/cancelwatch/compiled.py):
# `Record` becomes an extension type, built without a per-object dict or slot descriptors.
# The Python source is unchanged; run as Python, `Record` is the slotted class it declares.
cdef class Record:
    cdef public object topic, partition, offset, timestamp, timestamp_type, key, value
    cdef public object checksum, serialized_key_size, serialized_value_size, headers

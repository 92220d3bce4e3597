"""A file's frames as model input: the `Frame` record, the readers per file kind (`kinds`), `decode`, the
`preprocessing` options and the on-device `transforms`. Nothing is imported here, so the option parser can
import `preprocessing` without numpy or Pillow."""

"""Names that cross a process or file boundary, in one place.

WebDataset member suffixes, manifest fields, split names and metric names are read by one
stage and written by another (or by MLflow and `chipmatch compare`), so they must never be
spelled twice.
"""

# --- dataset manifest --------------------------------------------------------------------
MANIFEST_SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"

# --- splits ------------------------------------------------------------------------------
SPLIT_TRAIN = "train"      # seen classes, used to fit the model
SPLIT_VAL = "val"          # images of seen classes held out for model selection
SPLIT_UNSEEN = "unseen"    # classes never trained on: retrieval is measured here only
SPLIT_TEST = "test"        # held-out images of trained classes: the retrieval set of protocol images
SPLITS = (SPLIT_TRAIN, SPLIT_VAL, SPLIT_UNSEEN, SPLIT_TEST)

# Split protocols (`split.protocol`) and where each one measures retrieval.
PROTOCOL_CLASSES = "classes"   # class-disjoint: train on seen classes, retrieve among unseen ones
PROTOCOL_IMAGES = "images"     # every class trained; retrieve among held-out images of them
PROTOCOLS = (PROTOCOL_CLASSES, PROTOCOL_IMAGES)
RETRIEVAL_SPLITS = {PROTOCOL_CLASSES: SPLIT_UNSEEN, PROTOCOL_IMAGES: SPLIT_TEST}

# Where a source says which of its own files an item came from (Fashion-MNIST's train/test
# files, a manifest's `split` column): a key of the item's metadata, value "train" or "test".
SOURCE_SPLIT = "source_split"

# Retrieval roles of unseen images.
ROLE_BOTH = "both"         # queries all others and is in the gallery (leave-one-out)
ROLE_QUERY = "query"
ROLE_GALLERY = "gallery"

# --- WebDataset sample members (tar member suffixes) --------------------------------------
WDS_IMAGE = "png"          # lossless, normalised chip (1 or 3 bands)
WDS_ARRAY = "npy"          # a chip with another band count (e.g. RGB + near-infrared): PNG cannot hold it
WDS_CHIP_MEMBERS = (WDS_IMAGE, WDS_ARRAY)
WDS_META = "json"          # class, superclass, attributes, split, role, source metadata

# Fields of a sample's metadata (the .json member) and of the records table.
KEY = "key"                # stable, unique sample key (also the WebDataset __key__)
LABEL = "label"            # fine-grained class name
SUPERCLASS = "superclass"  # optional coarse class name
SPLIT = "split"
ROLE = "role"
SOURCE = "source"          # where the sample came from (path, scene id, ...)
ATTRIBUTES = "attributes"  # continuous labels (e.g. length_m, width_m) for log-ratio loss
SHA256 = "sha256"          # of the raw input bytes (duplicates / conflicting labels)

# Optional sample metadata that ingest checks and the index's search filters read.
LONGITUDE = "lon"          # degrees, WGS84
LATITUDE = "lat"
TIME = "time"              # acquisition time
SCENE_ID = "scene_id"      # the scene (e.g. GeoTIFF) a chip was cut from

# The feature layer an index holds when its source.json names none (indexes built before
# `index.tap`): the embedding.
INDEX_TAP_DEFAULT = "embedding"

# --- rejection reasons ---------------------------------------------------------------------
REJECT_EMPTY = "empty_file"
REJECT_UNREADABLE = "unreadable"
REJECT_TRUNCATED = "truncated"
REJECT_CORRUPT = "corrupt"
REJECT_UNKNOWN_FORMAT = "unknown_format"
REJECT_MISSING_LABEL = "missing_label"
REJECT_CONFLICTING_LABELS = "conflicting_labels"   # byte-identical image under two classes
REJECT_DUPLICATE = "duplicate"                     # byte-identical image twice in one class
REJECT_TOO_SMALL = "too_small"
REJECT_OUT_OF_BOUNDS = "out_of_bounds"             # geotiff annotation outside its scene
REJECT_WRONG_BANDS = "wrong_band_count"            # fewer bands than shard.channels asks for
REJECT_BAD_METADATA = "bad_metadata"               # lon/lat/time/split/attribute that does not parse or is out of range

# --- metric names (evaluation, MLflow, compare) --------------------------------------------
METRIC_MAP = "mAP"
METRIC_MAP_AT_R = "MAP@R"
METRIC_R_PRECISION = "R-precision"
METRIC_ACCURACY = "accuracy"
# Continuous labels: how well embedding distance ranks attribute distance (evaluation/attributes.py).
METRIC_ATTRIBUTE_SPEARMAN = "attribute_spearman"
# Counts that `retrieval_metrics` adds to its metrics (logged to MLflow with them).
NUM_QUERIES = "num_queries"
NUM_QUERIES_WITHOUT_RELEVANT = "num_queries_without_relevant"


def recall_at(k: int) -> str:
    """Metric name of Recall@K, e.g. ``R@1``."""
    return f"R@{k}"


DEFAULT_RECALL_KS = (1, 2, 4, 8, 16, 32)


def attribute_ndcg_at(k: int) -> str:
    """Metric name of nDCG@k of the attribute ranking, e.g. ``attribute_nDCG@10``."""
    return f"attribute_nDCG@{k}"


# MLflow keys may not contain '@': R@1 is logged as R_at_1, MAP@R as MAP_at_R.
def mlflow_key(name: str) -> str:
    return name.replace("@", "_at_")

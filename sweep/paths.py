"""Where things live by default: the checkout, its config folder, the local MLflow store. Imports nothing heavy."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"  # conf/tracking/sqlite.yaml's store

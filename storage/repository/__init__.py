"""Repository functions: keyword-only, typed, each takes a Session first and works inside the
caller's transaction (use ``with Session.begin() as session:``). No Telegram types; every query
that touches user data is scoped by the user. See docs/INTERFACES.md ("storage")."""

from storage.repository.jobs import (
    claim_job,
    create_finetune_job,
    fail_job,
    finetune_status,
    finish_job,
    get_job,
    requeue_stale_jobs,
    users_due_for_finetune,
)
from storage.repository.labels import (
    current_label_count,
    label_reading,
    label_revision,
    label_sample,
    training_set,
    undo_label,
)
from storage.repository.model_versions import (
    active_model_version,
    add_model_version,
    load_weights,
    model_versions,
    promote_model_version,
    reject_model_version,
    retire_active_model,
)
from storage.repository.readings import (
    attach_bot_message,
    count_samples,
    get_reading,
    reading_for_message,
    record_reading,
    set_true_text,
)
from storage.repository.stats import user_stats
from storage.repository.users import (
    count_user_rows,
    forget_user,
    get_or_create_user,
    get_user,
    mark_started_private,
    mark_update_processed,
    prune_processed_updates,
    set_user_language,
    started_private,
)
from storage.repository.weight_files import sweep_orphan_weights

__all__ = [
    "active_model_version",
    "add_model_version",
    "attach_bot_message",
    "claim_job",
    "count_samples",
    "count_user_rows",
    "create_finetune_job",
    "current_label_count",
    "fail_job",
    "finetune_status",
    "finish_job",
    "forget_user",
    "get_job",
    "get_or_create_user",
    "get_reading",
    "get_user",
    "label_reading",
    "label_revision",
    "label_sample",
    "load_weights",
    "mark_started_private",
    "mark_update_processed",
    "model_versions",
    "promote_model_version",
    "prune_processed_updates",
    "reading_for_message",
    "record_reading",
    "reject_model_version",
    "requeue_stale_jobs",
    "retire_active_model",
    "set_true_text",
    "set_user_language",
    "started_private",
    "sweep_orphan_weights",
    "training_set",
    "undo_label",
    "user_stats",
    "users_due_for_finetune",
]

"""The ``evaluate`` stage: the CPT model beside its base model, on what the blog judged CPT by.

    cpt-launch evaluate --model-dir HF_DIR [--base-model-dir HF_DIR] --data ja=GLOB --data en=GLOB
                        [--prompts FILE] [--lm-eval TASKS] [--output FILE] [--json]

Modules: ``script`` (is a reply mainly Japanese), ``data`` (NAME=GLOB|PREFIX items -> token ids), ``ppl``
(token-level perplexity), ``replies`` (greedy answers to the shipped prompts), ``harness`` (lm-evaluation-harness
tasks and the offline check of their datasets), ``cli`` (the subcommand and the JSON it writes).
torch, transformers and lm_eval are imported only inside the functions that need them: `cpt-launch --help`,
`plan` and `submit` never load them.
"""

SCHEMA_VERSION = 1

"""Hugging Face Space entry: serve the Latent Shift demo (``python app.py --help`` for options).

The app lives in :mod:`latentshift.app`; this file only parses the command line before Gradio
is imported (huggingface_hub reads ``HF_HUB_OFFLINE`` at import) and starts it.
Research and teaching demo, not for clinical use.
"""

from latentshift.app.serving import parse_args, prepare_environment

if __name__ == "__main__":
    from latentshift.runtime import set_allocator_tunables

    set_allocator_tunables()  # glibc's allocator settings, before torch allocates
    COMMAND_LINE = parse_args()
    prepare_environment(COMMAND_LINE)
    from latentshift.app import main

    main(COMMAND_LINE)

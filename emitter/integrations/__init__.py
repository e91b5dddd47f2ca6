"""Native integrations, each imported only when used (never by ``import runwire``):

    from runwire.integrations.lightning import RunwireLogger       # PyTorch Lightning
    from runwire.integrations.huggingface import RunwireCallback   # Hugging Face Trainer
"""

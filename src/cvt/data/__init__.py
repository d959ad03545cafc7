"""The application's data: framework-free sources (:mod:`.sources`: folders, lists, the digits split), torch data
sets over them (:mod:`.datasets`), torch tensors from the core's preprocessing (:mod:`.transforms`), augmentation."""

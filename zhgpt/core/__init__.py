"""Small helpers every stage shares (devices and dtypes, atomic files and folders, number formats).
They import nothing from zhgpt but `errors` and `config`, so any stage may use them."""

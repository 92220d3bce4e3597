"""What a person looks at: figures (`plots`)."""
